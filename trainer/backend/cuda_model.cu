// Every step below names the CPU call it mirrors (model/mixtral.cc), so the
// two files read side by side.
#include "trainer/backend/cuda_model.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "kernels/attention.cuh"
#include "kernels/cast.cuh"
#include "kernels/cross_entropy.cuh"
#include "kernels/device.h"
#include "kernels/dispatch.cuh"
#include "kernels/embedding.cuh"
#include "kernels/flash_attention.cuh"
#include "kernels/rmsnorm.cuh"
#include "kernels/rope.cuh"
#include "kernels/router.cuh"
#include "kernels/shared/math.h"
#include "kernels/shared/router_row.h"
#include "kernels/swiglu.cuh"
#include "trainer/ops/rope.h"
#include "trainer/ops/router.h"

namespace hetermoe::backend {

using kernels::ComputeDtype;
using kernels::DeviceBuffer;

namespace {

size_t ElementBytes(ComputeDtype dtype) { return dtype == ComputeDtype::kFp32 ? 4 : 2; }

template <typename T>
void Alloc(DeviceModel& m, DeviceBuffer<T>& b, int64_t n) {
  b.Bind(&m.allocator);
  b.Resize(static_cast<size_t>(n));
}

}  // namespace

// --- DeviceModel ---

DeviceModel::DeviceModel(const io::MixtralConfig& c, const model::ParameterLayout& l, const BackendOptions& o)
    : config(c), layout(l), options(o), allocator(kernels::CudaMallocBacking()) {
  std::string why;
  if (kernels::CudaDeviceCount(&why) == 0) throw Error("CUDA backend: no usable GPU (" + why + ")");
  HM_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  HM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  device_name = prop.name;
  sm = prop.major * 10 + prop.minor;
  policy = kernels::ChoosePrecision(options.precision, sm);
  kernels::DynamicLossScaler::Options scaling;
  scaling.initial_scale = options.loss_scale_init;
  scaler = kernels::DynamicLossScaler(scaling);
  stream = std::make_unique<kernels::Stream>();
  blas = std::make_unique<kernels::BlasHandle>(stream->get());
  experts = std::make_unique<kernels::ExpertGemms>(&allocator, stream->get());
  for (auto* b : {&params, &grads, &exp_avg, &exp_avg_sq}) Alloc(*this, *b, layout.total());
  params16.Bind(&allocator);
  if (policy.compute != ComputeDtype::kFp32) params16.Resize(layout.total());
  for (auto& buf : cast) buf.Bind(&allocator);
  dg1.Bind(&allocator);
  dg3.Bind(&allocator);
  norm_sums.Bind(&allocator);
  embed_sums.Bind(&allocator);
  plan_ints.Bind(&allocator);
  prob_sums.Bind(&allocator);
  for (auto* b : {&params, &grads, &exp_avg, &exp_avg_sq})
    HM_CUDA_CHECK(cudaMemsetAsync(b->data(), 0, b->bytes(), s()));
}

DeviceModel::~DeviceModel() {
  if (stream) cudaStreamSynchronize(stream->get());  // no kernel may outlive its buffers
}

std::string DeviceModel::Describe() const {
  const kernels::AttentionDims dims{1, 1, config.num_attention_heads, config.num_key_value_heads, config.HeadDim(),
                                    config.sliding_window};
  return "cuda:" + std::to_string(device) + " (" + device_name + ", sm_" + std::to_string(sm) + ", " +
         std::string(kernels::ComputeDtypeName(policy.compute)) +
         (FlashAttention(dims) ? ", tensor-core attention" : "") + ")";
}

bool DeviceModel::FlashAttention(const kernels::AttentionDims& dims) const {
  return kernels::FlashAttentionSupported(dims, policy.compute, sm);
}

const void* DeviceModel::Weight(int64_t offset) const {
  if (policy.compute == ComputeDtype::kFp32) return params.data() + offset;
  return reinterpret_cast<const char*>(params16.data()) + offset * 2;
}

// Valid until scratch `slot` is used again; all on one stream, so reuse is
// ordered after the GEMMs that read it.
const void* DeviceModel::Operand(const float* x, int64_t n, int slot) {
  if (policy.compute == ComputeDtype::kFp32) return x;
  DeviceBuffer<uint16_t>& b = cast[slot];
  if (b.size() < static_cast<size_t>(n)) b.Resize(static_cast<size_t>(n));
  CastTo16(x, n, b.data());
  return b.data();
}

void DeviceModel::CastTo16(const float* x, int64_t n, uint16_t* out) {
  if (policy.compute == ComputeDtype::kBf16)
    HM_CUDA_CHECK(kernels::LaunchCastToBf16(x, n, reinterpret_cast<__nv_bfloat16*>(out), s()));
  else if (policy.compute == ComputeDtype::kFp16)
    HM_CUDA_CHECK(kernels::LaunchCastToHalf(x, n, reinterpret_cast<__half*>(out), s()));
  else
    throw Error("CUDA backend: a 16-bit copy asked for in an fp32 run");
}

const void* DeviceModel::At(const void* base, int64_t elem) const {
  return static_cast<const char*>(base) + elem * ElementBytes(policy.compute);
}

void DeviceModel::RefreshCompute16() {
  if (policy.compute == ComputeDtype::kBf16)
    HM_CUDA_CHECK(kernels::LaunchCastToBf16(params.data(), layout.total(),
                                            reinterpret_cast<__nv_bfloat16*>(params16.data()), s()));
  else if (policy.compute == ComputeDtype::kFp16)
    HM_CUDA_CHECK(kernels::LaunchCastToHalf(params.data(), layout.total(),
                                            reinterpret_cast<__half*>(params16.data()), s()));
}

void DeviceModel::Linear(int64_t M, int64_t N, int64_t K, const float* x, int64_t w_offset, float* y,
                         bool accumulate, int slot) {
  kernels::LinearForward(blas->get(), policy.compute, M, N, K, Operand(x, M * K, slot), Weight(w_offset), y,
                         accumulate);
}
void DeviceModel::LinearDx(int64_t M, int64_t N, int64_t K, const float* dy, int64_t w_offset, float* dx,
                           bool accumulate) {
  kernels::LinearBackwardInput(blas->get(), policy.compute, M, N, K, Operand(dy, M * N, 0), Weight(w_offset), dx,
                               accumulate);
}
void DeviceModel::LinearDw(int64_t M, int64_t N, int64_t K, const float* dy, const float* x, int64_t g_offset) {
  LinearDwOp(M, N, K, dy, Operand(x, M * K, 1), g_offset);
}
void DeviceModel::LinearOp(int64_t M, int64_t N, int64_t K, const void* x_op, int64_t w_offset, float* y,
                           bool accumulate) {
  kernels::LinearForward(blas->get(), policy.compute, M, N, K, x_op, Weight(w_offset), y, accumulate);
}
void DeviceModel::LinearDwOp(int64_t M, int64_t N, int64_t K, const float* dy, const void* x_op, int64_t g_offset) {
  kernels::LinearBackwardWeight(blas->get(), policy.compute, M, N, K, Operand(dy, M * N, 0), x_op,
                                grads.data() + g_offset);
}

namespace {
// `b` grown to at least n elements (stream order makes the reuse safe); null
// when none is needed.
template <typename T>
T* Scratch(DeviceBuffer<T>& b, int64_t n) {
  if (b.size() < static_cast<size_t>(n)) b.Resize(static_cast<size_t>(n));
  return n > 0 ? b.data() : nullptr;
}
}  // namespace

float* DeviceModel::RmsNormWorkspace(int64_t N, int64_t d) {
  return Scratch(norm_sums, kernels::RmsNormBackwardWorkspace(N, d));
}
float* DeviceModel::EmbeddingWorkspace(int64_t floats) { return Scratch(embed_sums, floats); }
int32_t* DeviceModel::DispatchWorkspace(int64_t N, int64_t k, int64_t E) {
  return Scratch(plan_ints, kernels::DispatchPlanWorkspace(N, k, E));
}
double* DeviceModel::ProbSumsWorkspace(int64_t N, int64_t E) {
  return Scratch(prob_sums, kernels::RouterProbSumsWorkspace(N, E));
}

void DeviceModel::ToDevice(const float* host, float* device_ptr, int64_t n) {
  if (n == 0) return;
  HM_CUDA_CHECK(cudaMemcpyAsync(device_ptr, host, sizeof(float) * n, cudaMemcpyHostToDevice, s()));
  HM_CUDA_CHECK(cudaStreamSynchronize(s()));  // the host buffer may change once we return
}
void DeviceModel::ToHost(const float* device_ptr, float* host, int64_t n) {
  if (n == 0) return;
  HM_CUDA_CHECK(cudaMemcpyAsync(host, device_ptr, sizeof(float) * n, cudaMemcpyDeviceToHost, s()));
  HM_CUDA_CHECK(cudaStreamSynchronize(s()));
}

// --- ExpertRows: mirrors ops::ExpertsForward / ops::ExpertsBackward ---

void ExpertRows::Bind(DeviceModel& m) {
  for (auto* b : {&xp, &y, &dy, &dxp, &g1, &g3, &act}) b->Bind(&m.allocator);
  act16.Bind(&m.allocator);
}

void ExpertRows::ReleaseActivations() {
  for (auto* b : {&g1, &g3, &act}) b->Free();
  act16.Free();
}

void ExpertRows::Resize(DeviceModel& m, int64_t rows, bool expert_activations) {
  const int64_t d = m.config.hidden_size, f = m.config.intermediate_size;
  for (auto* b : {&xp, &y, &dy, &dxp})
    if (b->size() < static_cast<size_t>(rows * d)) b->Resize(static_cast<size_t>(rows * d));
  if (!expert_activations) return;
  const auto n = static_cast<size_t>(rows * f);
  for (auto* b : {&g1, &g3})
    if (b->size() < n) b->Resize(n);
  if (m.Compute16()) {
    if (act16.size() < n) act16.Resize(n);
  } else if (act.size() < n) {
    act.Resize(n);
  }
}

void ExpertRows::Product(DeviceModel& m, kernels::GroupedProduct product, int64_t N, int64_t K, const void* a,
                         const void* x, int64_t model::ExpertOffsets::*w, float* c, bool accumulate) {
  using kernels::GroupedProduct;
  const auto& ex = m.layout.layers[layer].experts;
  const bool weight_grad = product == GroupedProduct::kBackwardWeight;
  if (device_offsets != nullptr) {
    // Every expert's tensor `w` the same distance after the previous one's
    // (the layout's order: w1, w2, w3 per expert).
    const int64_t stride = count > 1 ? ex[first + 1].*w - ex[first].*w : N * K;
    for (int64_t e = first + 1; e < first + count; ++e)
      if (ex[e].*w - ex[e - 1].*w != stride)
        throw Error("CUDA backend: layer " + std::to_string(layer) + "'s expert weights are not evenly spaced");
    kernels::DeviceSizedGemm g;
    g.product = product;
    g.inputs = m.policy.compute;
    g.N = N;
    g.K = K;
    g.experts = count;
    g.offsets = device_offsets + first;
    g.max_rows = total_rows;
    g.a = a;
    g.b = weight_grad ? x : m.Weight(ex[first].*w);
    g.weight_stride = stride;
    g.c = weight_grad ? m.grads.data() + ex[first].*w : c;
    g.accumulate = accumulate;
    HM_CUDA_CHECK(kernels::LaunchDeviceSizedGemm(g, m.s()));
    return;
  }
  // cuBLAS's grouped GEMM: one problem per expert of the range over its rows.
  std::vector<kernels::ExpertProblem> problems;
  for (int64_t e = first; e < first + count; ++e) {
    const int64_t r0 = offsets[e];
    if (product == GroupedProduct::kForward)
      problems.push_back({counts[e], m.At(a, r0 * K), m.Weight(ex[e].*w), c + r0 * N});
    else if (product == GroupedProduct::kBackwardInput)
      problems.push_back({counts[e], m.At(a, r0 * N), m.Weight(ex[e].*w), c + r0 * K});
    else
      problems.push_back({counts[e], m.At(a, r0 * N), m.At(x, r0 * K), m.grads.data() + ex[e].*w});
  }
  if (product == GroupedProduct::kForward)
    m.experts->Forward(m.blas->get(), m.policy.compute, N, K, problems, accumulate);
  else if (product == GroupedProduct::kBackwardInput)
    m.experts->BackwardInput(m.blas->get(), m.policy.compute, N, K, problems, accumulate);
  else
    m.experts->BackwardWeight(m.blas->get(), m.policy.compute, N, K, problems);
}

void ExpertRows::Forward(DeviceModel& m) {
  using kernels::GroupedProduct;
  using model::ExpertOffsets;
  const int64_t d = m.config.hidden_size, f = m.config.intermediate_size;
  const int64_t rows = Rows();
  // g1 = xp W1^T, g3 = xp W3^T, act = silu(g1) * g3, y = act W2^T.
  const void* xp_op = m.Operand(xp.data(), rows * d, 0);
  Product(m, GroupedProduct::kForward, f, d, xp_op, nullptr, &ExpertOffsets::w1, g1.data(), false);
  Product(m, GroupedProduct::kForward, f, d, xp_op, nullptr, &ExpertOffsets::w3, g3.data(), false);
  // act = silu(g1) * g3, kept as the operand of the W2 GEMMs; 16-bit runs
  // compute it into the backward's scratch dg1 (free until Backward).
  float* act32 = m.Compute16() ? Scratch(m.dg1, rows * f) : act.data();
  HM_CUDA_CHECK(kernels::LaunchSwiGluForward(g1.data(), g3.data(), rows * f, act32, m.s()));
  if (m.Compute16()) m.CastTo16(act32, rows * f, act16.data());
  const void* act_op = m.Compute16() ? static_cast<const void*>(act16.data()) : act.data();
  Product(m, GroupedProduct::kForward, d, f, act_op, nullptr, &ExpertOffsets::w2, y.data(), false);
}

void ExpertRows::Backward(DeviceModel& m) {
  using kernels::GroupedProduct;
  using model::ExpertOffsets;
  const int64_t d = m.config.hidden_size, f = m.config.intermediate_size;
  const int64_t rows = Rows();
  if (m.dg1.size() < static_cast<size_t>(rows * f)) m.dg1.Resize(static_cast<size_t>(rows * f));
  if (m.dg3.size() < static_cast<size_t>(rows * f)) m.dg3.Resize(static_cast<size_t>(rows * f));
  float* dg1 = m.dg1.data();
  float* dg3 = m.dg3.data();
  // dact = dy W2 (held in dg1), dW2 += dy^T act; experts with no tokens
  // keep their weight gradients as they are.
  const void* dy_op = m.Operand(dy.data(), rows * d, 0);
  const void* act_op = m.Compute16() ? static_cast<const void*>(act16.data()) : act.data();
  Product(m, GroupedProduct::kBackwardInput, d, f, dy_op, nullptr, &ExpertOffsets::w2, dg1, false);
  Product(m, GroupedProduct::kBackwardWeight, d, f, dy_op, act_op, &ExpertOffsets::w2, nullptr, true);
  HM_CUDA_CHECK(kernels::LaunchSwiGluBackward(g1.data(), g3.data(), dg1, rows * f, dg1, dg3, m.s()));
  // dW1 += dg1^T xp, dW3 += dg3^T xp, dxp = dg1 W1 + dg3 W3.
  const void* dg1_op = m.Operand(dg1, rows * f, 0);
  const void* dg3_op = m.Operand(dg3, rows * f, 1);
  const void* xp_op = m.Operand(xp.data(), rows * d, 2);
  Product(m, GroupedProduct::kBackwardWeight, f, d, dg1_op, xp_op, &ExpertOffsets::w1, nullptr, true);
  Product(m, GroupedProduct::kBackwardWeight, f, d, dg3_op, xp_op, &ExpertOffsets::w3, nullptr, true);
  Product(m, GroupedProduct::kBackwardInput, f, d, dg1_op, nullptr, &ExpertOffsets::w1, dxp.data(), false);
  Product(m, GroupedProduct::kBackwardInput, f, d, dg3_op, nullptr, &ExpertOffsets::w3, dxp.data(), true);
}

// --- DeviceMicroBatch ---

struct DeviceMicroBatch::State {
  // Activations one layer's backward needs, as MixtralCpu::LayerActivations.
  struct Layer {
    DeviceBuffer<float> resid_in;  // [N, d]
    AttentionActivations att;      // empty when recomputed (in `shared`)
    DeviceBuffer<float> probs, topk_weight, topk_sum;  // [N, E], [N, k], [N]
    DeviceBuffer<int32_t> topk_expert;                 // [N, k]
    int32_t* counts = nullptr;   // the dispatch plan: [E] and [E + 1] in State::plan_sizes
    int32_t* offsets = nullptr;
    DeviceBuffer<int32_t> row_of, token_of_row;
    ExpertRows rows;  // xp, y, dy, dxp [A, d] (+ expert activations when local)
    bool plan_on_host = true;  // rows.counts/offsets hold the device plan's (HostPlan)
  };

  explicit State(DeviceModel& model) : m(model) {}
  DeviceModel& m;
  int64_t batch = 0, seq_len = 0, tokens = 0;
  bool local_experts = false;  // expert activations allocated
  std::shared_ptr<AttentionActivations> shared;  // train.recompute attention
  DeviceBuffer<float> rope_cos, rope_sin;
  DeviceBuffer<int32_t> inputs, targets;
  kernels::EmbeddingGradPlan embed_plan;  // the embedding backward's sums, from this micro-batch's ids
  DeviceBuffer<int32_t> embed_plan_device;
  std::vector<Layer> layers;
  DeviceBuffer<int32_t> plan_sizes;  // every layer's dispatch plan counts and offsets, one copy away from the host
  DeviceBuffer<float> resid_out, final_normed, final_rstd, logits, row_loss, gate_logits;
  DeviceBuffer<double> prob_sums;
  DeviceBuffer<float> dnormed, dh, dm, dweight, dgate, aux_dprob;
  DeviceBuffer<float> dq, dk, dv, dattn, attn_D;
  DeviceBuffer<float> normed;  // [N, d] 16-bit runs: a normed input on its way to its kept 16-bit copy
  std::vector<int64_t> aux_counts;  // by original expert (order)
  int64_t aux_rows = 0;
  std::shared_ptr<const std::vector<std::vector<int32_t>>> order;
  int64_t Original(int64_t l, int64_t e) const { return order && !order->empty() ? (*order)[l][e] : e; }

  template <typename T>
  void Alloc(DeviceBuffer<T>& b, int64_t n) {
    ::hetermoe::backend::Alloc(m, b, n);
  }

  void Resize(int64_t b, int64_t t) {
    if (b == batch && t == seq_len) return;
    HM_CUDA_CHECK(cudaStreamSynchronize(m.s()));  // old buffers may still be in use
    batch = b;
    seq_len = t;
    tokens = b * t;
    const auto& c = m.config;
    const int64_t N = tokens, d = c.hidden_size, hd = c.HeadDim();
    const int64_t H = c.num_attention_heads, KV = c.num_key_value_heads;
    const int64_t E = c.num_local_experts, k = c.num_experts_per_tok;
    const int64_t V = c.vocab_size, A = N * k, qd = H * hd, kvd = KV * hd;

    const ops::RopeTable table = ops::MakeRopeTable(t, c);
    Alloc(rope_cos, static_cast<int64_t>(table.cos.size()));
    Alloc(rope_sin, static_cast<int64_t>(table.sin.size()));
    HM_CUDA_CHECK(cudaMemcpyAsync(rope_cos.data(), table.cos.data(), rope_cos.bytes(), cudaMemcpyHostToDevice, m.s()));
    HM_CUDA_CHECK(cudaMemcpyAsync(rope_sin.data(), table.sin.data(), rope_sin.bytes(), cudaMemcpyHostToDevice, m.s()));
    HM_CUDA_CHECK(cudaStreamSynchronize(m.s()));  // the table is a local

    layers.clear();
    layers.resize(c.num_hidden_layers);
    Alloc(plan_sizes, c.num_hidden_layers * (2 * E + 1));
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      Layer& la = layers[l];
      Alloc(la.resid_in, N * d);
      if (!shared) SizeAttention(la.att);
      Alloc(la.probs, N * E);
      Alloc(la.topk_weight, A);
      Alloc(la.topk_sum, N);
      Alloc(la.topk_expert, A);
      la.counts = plan_sizes.data() + l * (2 * E + 1);
      la.offsets = la.counts + E;
      Alloc(la.row_of, A);
      Alloc(la.token_of_row, A);
      la.rows.Bind(m);
      la.rows.Resize(m, A, local_experts);
      la.rows.layer = l;
      la.rows.first = 0;
      la.rows.count = E;
      la.rows.counts.assign(E, 0);
      la.rows.offsets.assign(E + 1, 0);
    }
    Alloc(inputs, N);
    Alloc(targets, N);
    Alloc(resid_out, N * d);
    Alloc(final_normed, N * d);
    Alloc(final_rstd, N);
    Alloc(logits, N * V);
    Alloc(row_loss, N);
    Alloc(gate_logits, N * E);
    Alloc(prob_sums, c.num_hidden_layers * E);
    Alloc(dnormed, N * d);
    Alloc(dh, N * d);
    Alloc(dm, N * d);
    Alloc(dweight, A);
    Alloc(dgate, N * E);
    Alloc(aux_dprob, c.num_hidden_layers * E);
    Alloc(dq, N * qd);
    Alloc(dk, N * kvd);
    Alloc(dv, N * kvd);
    Alloc(dattn, N * qd);
    Alloc(attn_D, b * H * t);
    if (m.Compute16()) Alloc(normed, N * d);
  }

  // Sized for the current micro-batch (a shared set: grown as needed; the
  // buffers of the set are reused in stream order).
  void SizeAttention(AttentionActivations& at) {
    const auto& c = m.config;
    const int64_t N = tokens, d = c.hidden_size, hd = c.HeadDim();
    const int64_t H = c.num_attention_heads, KV = c.num_key_value_heads;
    auto size = [&](auto& buf, int64_t n) {
      if (buf.size() < static_cast<size_t>(n)) Alloc(buf, n);
    };
    size(at.rstd1, N);
    size(at.q, N * H * hd);
    size(at.k, N * KV * hd);
    size(at.v, N * KV * hd);
    size(at.attn, N * H * hd);
    size(at.lse, batch * H * seq_len);
    size(at.h_mid, N * d);
    size(at.rstd2, N);
    if (m.Compute16()) {
      size(at.a16, N * d);
      size(at.m16, N * d);
    } else {
      size(at.a, N * d);
      size(at.m, N * d);
    }
  }
  AttentionActivations& Att(int64_t l) { return shared ? *shared : layers[l].att; }
  // The fp32 normed inputs: kept (fp32 runs) or passing through `normed`.
  float* A32(AttentionActivations& at) { return m.Compute16() ? normed.data() : at.a.data(); }
  float* M32(AttentionActivations& at) { return m.Compute16() ? normed.data() : at.m.data(); }
  // ... and as GEMM operands, the values backward reads.
  const void* AOp(AttentionActivations& at) {
    return m.Compute16() ? static_cast<const void*>(at.a16.data()) : at.a.data();
  }
  const void* MOp(AttentionActivations& at) {
    return m.Compute16() ? static_cast<const void*>(at.m16.data()) : at.m.data();
  }
  void AttentionBlock(int64_t l, AttentionActivations& at, float* h_mid);

  // Layer l's dispatch plan (counts, offsets) on the host: copied from the
  // device, waiting for the router, the first time after AttentionForward
  // something asks (an exchange to size, the metrics, the aux loss), never
  // for the experts of this micro-batch (they read the device's). Every
  // layer's not yet copied comes in the same copy.
  void HostPlan(int64_t l) {
    if (layers[l].plan_on_host) return;
    const int64_t E = m.config.num_local_experts, L = static_cast<int64_t>(layers.size());
    std::vector<int32_t> sizes(plan_sizes.size());
    HM_CUDA_CHECK(cudaMemcpyAsync(sizes.data(), plan_sizes.data(), plan_sizes.bytes(), cudaMemcpyDeviceToHost, m.s()));
    HM_CUDA_CHECK(cudaStreamSynchronize(m.s()));
    for (int64_t j = 0; j < L; ++j) {
      Layer& la = layers[j];
      if (la.plan_on_host) continue;
      const int32_t* counts = sizes.data() + j * (2 * E + 1);
      la.rows.counts.assign(counts, counts + E);
      la.rows.offsets.assign(counts + E, counts + 2 * E + 1);
      la.plan_on_host = true;
    }
  }

  kernels::AttentionDims Dims() const {
    return {batch, seq_len, m.config.num_attention_heads, m.config.num_key_value_heads, m.config.HeadDim(),
            m.config.sliding_window};
  }
  float* ResidualOut(int64_t l) { return l + 1 < static_cast<int64_t>(layers.size()) ? layers[l + 1].resid_in.data() : resid_out.data(); }
};

DeviceMicroBatch::DeviceMicroBatch(DeviceModel& model) : state_(std::make_unique<State>(model)) {}
DeviceMicroBatch::~DeviceMicroBatch() = default;

void DeviceMicroBatch::RecomputeAttention(std::shared_ptr<AttentionActivations> shared) {
  if (state_->tokens != 0) throw Error("CUDA backend: RecomputeAttention after the first EmbedForward");
  for (auto* b : {&shared->a, &shared->rstd1, &shared->q, &shared->k, &shared->v, &shared->attn, &shared->lse,
                  &shared->h_mid, &shared->m, &shared->rstd2})
    b->Bind(&state_->m.allocator);
  shared->a16.Bind(&state_->m.allocator);
  shared->m16.Bind(&state_->m.allocator);
  state_->shared = std::move(shared);
}

void DeviceMicroBatch::SetExpertOrder(std::shared_ptr<const std::vector<std::vector<int32_t>>> order) {
  state_->order = std::move(order);
}

void DeviceMicroBatch::EmbedForward(const model::MicroBatch& mb) {
  State& st = *state_;
  DeviceModel& m = st.m;
  const int64_t V = m.config.vocab_size;
  st.Resize(mb.batch, mb.seq_len);
  for (int64_t n = 0; n < st.tokens; ++n)
    if (mb.inputs[n] < 0 || mb.inputs[n] >= V || mb.targets[n] < 0 || mb.targets[n] >= V)
      throw Error("CUDA backend: token id out of range [0, " + std::to_string(V) + ") at position " + std::to_string(n));
  HM_CUDA_CHECK(cudaMemcpyAsync(st.inputs.data(), mb.inputs, st.inputs.bytes(), cudaMemcpyHostToDevice, m.s()));
  HM_CUDA_CHECK(cudaMemcpyAsync(st.targets.data(), mb.targets, st.targets.bytes(), cudaMemcpyHostToDevice, m.s()));
  st.embed_plan = kernels::MakeEmbeddingGradPlan(mb.inputs, st.tokens);
  const std::vector<int32_t> packed = st.embed_plan.Packed();
  Alloc(m, st.embed_plan_device, static_cast<int64_t>(packed.size()));
  HM_CUDA_CHECK(cudaMemcpyAsync(st.embed_plan_device.data(), packed.data(), packed.size() * sizeof(int32_t),
                                cudaMemcpyHostToDevice, m.s()));
  // h = embed_tokens[x]
  float* h = st.layers.empty() ? st.resid_out.data() : st.layers[0].resid_in.data();
  HM_CUDA_CHECK(kernels::LaunchEmbeddingForward(m.params.data() + m.layout.embed, st.inputs.data(), st.tokens,
                                                m.config.hidden_size, h, m.s()));
  HM_CUDA_CHECK(cudaStreamSynchronize(m.s()));  // the token ids are the caller's host memory
}

// Layer l's attention block over its input into `at`, the residual after it
// into h_mid (which may be outside `at`), and the MoE's RMSNorm (its fp32
// values left in M32(at)).
void DeviceMicroBatch::State::AttentionBlock(int64_t l, AttentionActivations& at, float* h_mid) {
  const auto& c = m.config;
  const int64_t N = tokens, d = c.hidden_size, hd = c.HeadDim();
  const int64_t H = c.num_attention_heads, KV = c.num_key_value_heads;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float* h = layers[l].resid_in.data();
  const model::LayerOffsets& lo = m.layout.layers[l];
  // --- attention block: h_mid = h + o_proj(attn(rope(q), rope(k), v)) ---
  HM_CUDA_CHECK(kernels::LaunchRmsNormForward(h, m.params.data() + lo.input_norm, N, d, eps, A32(at),
                                              at.rstd1.data(), m.s()));
  if (m.Compute16()) m.CastTo16(A32(at), N * d, at.a16.data());
  const void* a_op = AOp(at);  // shared by q, k, v
  m.LinearOp(N, H * hd, d, a_op, lo.q, at.q.data(), false);
  m.LinearOp(N, KV * hd, d, a_op, lo.k, at.k.data(), false);
  m.LinearOp(N, KV * hd, d, a_op, lo.v, at.v.data(), false);
  HM_CUDA_CHECK(kernels::LaunchRope(at.q.data(), rope_cos.data(), rope_sin.data(), N, H, hd, seq_len, false, m.s()));
  HM_CUDA_CHECK(kernels::LaunchRope(at.k.data(), rope_cos.data(), rope_sin.data(), N, KV, hd, seq_len, false, m.s()));
  if (m.FlashAttention(Dims()))
    HM_CUDA_CHECK(kernels::LaunchFlashAttentionForward(Dims(), m.policy.compute, at.q.data(), at.k.data(),
                                                       at.v.data(), at.attn.data(), at.lse.data(), m.s()));
  else
    HM_CUDA_CHECK(kernels::LaunchAttentionForward(Dims(), at.q.data(), at.k.data(), at.v.data(), at.attn.data(),
                                                  at.lse.data(), m.s()));
  HM_CUDA_CHECK(cudaMemcpyAsync(h_mid, h, sizeof(float) * N * d, cudaMemcpyDeviceToDevice, m.s()));
  m.Linear(N, d, H * hd, at.attn.data(), lo.o, h_mid, true);
  // --- the MoE's input ---
  HM_CUDA_CHECK(kernels::LaunchRmsNormForward(h_mid, m.params.data() + lo.post_norm, N, d, eps, M32(at),
                                              at.rstd2.data(), m.s()));
  if (m.Compute16()) m.CastTo16(M32(at), N * d, at.m16.data());
}

void DeviceMicroBatch::AttentionForward(int64_t l) {
  State& st = *state_;
  DeviceModel& m = st.m;
  const auto& c = m.config;
  const int64_t N = st.tokens, d = c.hidden_size;
  const int64_t E = c.num_local_experts, k = c.num_experts_per_tok;
  State::Layer& la = st.layers[l];
  const model::LayerOffsets& lo = m.layout.layers[l];
  AttentionActivations& at = st.Att(l);
  // Recomputed: the shared set sized for this micro-batch, and the residual
  // after attention written where CombineForward adds the experts to it.
  if (st.shared) st.SizeAttention(at);
  st.AttentionBlock(l, at, st.shared ? st.ResidualOut(l) : at.h_mid.data());

  // --- MoE block: router -> dispatch (the experts and combine are stages of their own) ---
  m.LinearOp(N, E, d, st.MOp(at), lo.gate, st.gate_logits.data(), false);
  HM_CUDA_CHECK(kernels::LaunchRouterForward(st.gate_logits.data(), N, E, k, la.probs.data(), la.topk_expert.data(),
                                             la.topk_weight.data(), la.topk_sum.data(), m.s()));
  HM_CUDA_CHECK(kernels::LaunchRouterProbSums(la.probs.data(), N, E, m.ProbSumsWorkspace(N, E),
                                              st.prob_sums.data() + l * E, m.s()));
  HM_CUDA_CHECK(kernels::LaunchBuildDispatchPlan(la.topk_expert.data(), N, k, E, la.counts, la.offsets,
                                                 la.row_of.data(), la.token_of_row.data(),
                                                 m.DispatchWorkspace(N, k, E), m.s()));
  HM_CUDA_CHECK(kernels::LaunchGatherRows(st.M32(at), la.token_of_row.data(), N * k, d, la.rows.xp.data(), m.s()));
  // The plan stays on the device: this micro-batch's own experts read it
  // there; the host copies it when asked (HostPlan).
  la.plan_on_host = false;
}

void DeviceMicroBatch::ExpertsForward(int64_t l) {
  State& st = *state_;
  if (!st.local_experts) {
    st.local_experts = true;
    for (auto& la : st.layers) la.rows.Resize(st.m, st.tokens * st.m.config.num_experts_per_tok, true);
  }
  ExpertRows& rows = st.layers[l].rows;
  const bool device_sized = kernels::DeviceSizedGemmSupported(st.m.policy.compute, st.m.sm);
  rows.device_offsets = device_sized ? st.layers[l].offsets : nullptr;
  rows.total_rows = st.tokens * st.m.config.num_experts_per_tok;
  if (!device_sized) st.HostPlan(l);  // V100/T4 16-bit: cuBLAS's GEMMs, sized on the host
  rows.Forward(st.m);
}

void DeviceMicroBatch::CombineForward(int64_t l) {
  State& st = *state_;
  DeviceModel& m = st.m;
  State::Layer& la = st.layers[l];
  const int64_t N = st.tokens, d = m.config.hidden_size, k = m.config.num_experts_per_tok;
  // h_out = h_mid + sum_slot weight * y[row_of(n, slot)]
  float* h_out = st.ResidualOut(l);
  // Recomputed attention wrote the residual after attention into h_out.
  if (!st.shared)
    HM_CUDA_CHECK(cudaMemcpyAsync(h_out, la.att.h_mid.data(), sizeof(float) * N * d, cudaMemcpyDeviceToDevice, m.s()));
  HM_CUDA_CHECK(kernels::LaunchCombine(la.rows.y.data(), la.topk_weight.data(), la.row_of.data(), N, k, d, h_out, m.s()));
}

model::LossParts DeviceMicroBatch::HeadForward() {
  State& st = *state_;
  DeviceModel& m = st.m;
  const auto& c = m.config;
  const int64_t N = st.tokens, d = c.hidden_size, V = c.vocab_size;
  const int64_t E = c.num_local_experts, L = c.num_hidden_layers;
  // logits = lm_head(norm(h)), then the cross-entropy per row.
  HM_CUDA_CHECK(kernels::LaunchRmsNormForward(st.resid_out.data(), m.params.data() + m.layout.final_norm, N, d,
                                              static_cast<float>(c.rms_norm_eps), st.final_normed.data(),
                                              st.final_rstd.data(), m.s()));
  m.Linear(N, V, d, st.final_normed.data(), m.layout.lm_head, st.logits.data(), false);
  HM_CUDA_CHECK(kernels::LaunchCrossEntropyForward(st.logits.data(), st.targets.data(), N, V, st.row_loss.data(), m.s()));

  std::vector<float> host_loss(N);
  std::vector<double> host_prob_sums(L * E);
  HM_CUDA_CHECK(cudaMemcpyAsync(host_loss.data(), st.row_loss.data(), st.row_loss.bytes(), cudaMemcpyDeviceToHost, m.s()));
  HM_CUDA_CHECK(cudaMemcpyAsync(host_prob_sums.data(), st.prob_sums.data(), st.prob_sums.bytes(),
                                cudaMemcpyDeviceToHost, m.s()));
  HM_CUDA_CHECK(cudaStreamSynchronize(m.s()));
  if (L > 0) st.HostPlan(L - 1);  // every layer's: the aux loss counts the routed rows

  st.aux_counts.assign(E, 0);
  std::vector<double> aux_prob_sums(E, 0.0);
  for (int64_t l = 0; l < L; ++l)
    for (int64_t e = 0; e < E; ++e) {
      st.aux_counts[st.Original(l, e)] += st.layers[l].rows.counts[e];
      aux_prob_sums[st.Original(l, e)] += host_prob_sums[l * E + e];
    }
  st.aux_rows = N * L;
  double ce = 0.0;
  for (float x : host_loss) ce += static_cast<double>(x);
  model::LossParts loss;
  loss.ce = ce / static_cast<double>(N);
  loss.aux = st.aux_rows > 0 ? ops::AuxLoss(E, st.aux_rows, st.aux_counts, aux_prob_sums) : 0.0;
  loss.total = loss.ce + c.router_aux_loss_coef * loss.aux;
  return loss;
}

void DeviceMicroBatch::HeadBackward(float loss_scale) {
  State& st = *state_;
  DeviceModel& m = st.m;
  if (st.tokens == 0) throw Error("CUDA backend: backward without forward");
  const auto& c = m.config;
  const int64_t N = st.tokens, d = c.hidden_size, V = c.vocab_size, E = c.num_local_experts;
  // fp16: gradients of (loss_scale * scale) * loss; ClipGradNorm unscales.
  const double scale = static_cast<double>(loss_scale) * (m.policy.dynamic_loss_scaling ? m.scaler.scale() : 1.0);
  HM_CUDA_CHECK(kernels::LaunchCrossEntropyBackward(st.logits.data(), st.targets.data(), N, V,
                                                    static_cast<float>(scale) / static_cast<float>(N),
                                                    st.logits.data(), m.s()));
  m.LinearDw(N, V, d, st.logits.data(), st.final_normed.data(), m.layout.lm_head);
  m.LinearDx(N, V, d, st.logits.data(), m.layout.lm_head, st.dnormed.data(), false);
  HM_CUDA_CHECK(cudaMemsetAsync(st.dh.data(), 0, st.dh.bytes(), m.s()));
  HM_CUDA_CHECK(kernels::LaunchRmsNormBackward(st.dnormed.data(), st.resid_out.data(),
                                               m.params.data() + m.layout.final_norm, st.final_rstd.data(), N, d,
                                               st.dh.data(), m.grads.data() + m.layout.final_norm,
                                               m.RmsNormWorkspace(N, d), m.s()));
  // Per layer, in its slots' order (the same in every layer unless experts
  // were swapped).
  const int64_t L = c.num_hidden_layers;
  std::vector<float> host_aux_dprob(L * E);
  for (int64_t l = 0; l < L; ++l)
    for (int64_t e = 0; e < E; ++e)
      host_aux_dprob[l * E + e] =
          math::AuxLossProbGrad(scale, c.router_aux_loss_coef, E, st.aux_counts[st.Original(l, e)], st.aux_rows);
  HM_CUDA_CHECK(cudaMemcpyAsync(st.aux_dprob.data(), host_aux_dprob.data(), st.aux_dprob.bytes(),
                                cudaMemcpyHostToDevice, m.s()));
  HM_CUDA_CHECK(cudaStreamSynchronize(m.s()));  // host_aux_dprob is a local
}

void DeviceMicroBatch::CombineBackward(int64_t l) {
  State& st = *state_;
  DeviceModel& m = st.m;
  State::Layer& la = st.layers[l];
  const int64_t N = st.tokens, d = m.config.hidden_size, k = m.config.num_experts_per_tok;
  // dy[row] = weight * dh[token]; dweight = dh . y
  HM_CUDA_CHECK(kernels::LaunchCombineBackward(la.rows.y.data(), la.topk_weight.data(), la.row_of.data(),
                                               st.dh.data(), N, k, d, la.rows.dy.data(), st.dweight.data(), m.s()));
}

void DeviceMicroBatch::ExpertsBackward(int64_t l) { state_->layers[l].rows.Backward(state_->m); }

void DeviceMicroBatch::AttentionBackward(int64_t l) {
  State& st = *state_;
  DeviceModel& m = st.m;
  const auto& c = m.config;
  const int64_t N = st.tokens, d = c.hidden_size, hd = c.HeadDim();
  const int64_t H = c.num_attention_heads, KV = c.num_key_value_heads;
  const int64_t E = c.num_local_experts, k = c.num_experts_per_tok;
  State::Layer& la = st.layers[l];
  const model::LayerOffsets& lo = m.layout.layers[l];
  AttentionActivations& at = st.Att(l);
  if (st.shared) st.AttentionBlock(l, at, at.h_mid.data());  // the forward's values again
  // --- the rest of the MoE block: dispatch (scatter-add) and the router ---
  HM_CUDA_CHECK(cudaMemsetAsync(st.dm.data(), 0, st.dm.bytes(), m.s()));
  HM_CUDA_CHECK(kernels::LaunchScatterAddRows(la.rows.dxp.data(), la.row_of.data(), N, k, d, st.dm.data(), m.s()));
  // The gate's second branch: the routing weights scale the expert outputs.
  HM_CUDA_CHECK(kernels::LaunchRouterBackward(la.probs.data(), la.topk_expert.data(), la.topk_weight.data(),
                                              la.topk_sum.data(), st.dweight.data(), st.aux_dprob.data() + l * E, N, E, k,
                                              st.dgate.data(), m.s()));
  m.LinearDwOp(N, E, d, st.dgate.data(), st.MOp(at), lo.gate);
  m.LinearDx(N, E, d, st.dgate.data(), lo.gate, st.dm.data(), true);
  HM_CUDA_CHECK(kernels::LaunchRmsNormBackward(st.dm.data(), at.h_mid.data(), m.params.data() + lo.post_norm,
                                               at.rstd2.data(), N, d, st.dh.data(), m.grads.data() + lo.post_norm,
                                               m.RmsNormWorkspace(N, d), m.s()));
  // --- attention block backward ---
  m.LinearDw(N, d, H * hd, st.dh.data(), at.attn.data(), lo.o);
  m.LinearDx(N, d, H * hd, st.dh.data(), lo.o, st.dattn.data(), false);
  if (m.FlashAttention(st.Dims()))
    HM_CUDA_CHECK(kernels::LaunchFlashAttentionBackward(st.Dims(), m.policy.compute, at.q.data(), at.k.data(),
                                                        at.v.data(), at.attn.data(), at.lse.data(), st.dattn.data(),
                                                        st.attn_D.data(), st.dq.data(), st.dk.data(), st.dv.data(),
                                                        m.s()));
  else
    HM_CUDA_CHECK(kernels::LaunchAttentionBackward(st.Dims(), at.q.data(), at.k.data(), at.v.data(),
                                                   at.attn.data(), at.lse.data(), st.dattn.data(),
                                                   st.attn_D.data(), st.dq.data(), st.dk.data(), st.dv.data(),
                                                   m.s()));
  HM_CUDA_CHECK(kernels::LaunchRope(st.dq.data(), st.rope_cos.data(), st.rope_sin.data(), N, H, hd, st.seq_len, true, m.s()));
  HM_CUDA_CHECK(kernels::LaunchRope(st.dk.data(), st.rope_cos.data(), st.rope_sin.data(), N, KV, hd, st.seq_len, true, m.s()));
  float* da = st.dm.data();  // reuse: gradient w.r.t. the normed input
  m.LinearDwOp(N, H * hd, d, st.dq.data(), st.AOp(at), lo.q);
  m.LinearDwOp(N, KV * hd, d, st.dk.data(), st.AOp(at), lo.k);
  m.LinearDwOp(N, KV * hd, d, st.dv.data(), st.AOp(at), lo.v);
  m.LinearDx(N, H * hd, d, st.dq.data(), lo.q, da, false);
  m.LinearDx(N, KV * hd, d, st.dk.data(), lo.k, da, true);
  m.LinearDx(N, KV * hd, d, st.dv.data(), lo.v, da, true);
  HM_CUDA_CHECK(kernels::LaunchRmsNormBackward(da, la.resid_in.data(), m.params.data() + lo.input_norm,
                                               at.rstd1.data(), N, d, st.dh.data(), m.grads.data() + lo.input_norm,
                                               m.RmsNormWorkspace(N, d), m.s()));
}

void DeviceMicroBatch::EmbedBackward() {
  State& st = *state_;
  DeviceModel& m = st.m;
  // Scatter-add rows of dh into the embedding table's gradient.
  const int64_t d = m.config.hidden_size;
  HM_CUDA_CHECK(kernels::LaunchEmbeddingBackward(
      st.dh.data(), st.embed_plan, st.embed_plan_device.data(), d,
      m.EmbeddingWorkspace(kernels::EmbeddingBackwardWorkspace(st.embed_plan, d)), m.grads.data() + m.layout.embed,
      m.s()));
}

void DeviceMicroBatch::DownloadDispatched(int64_t l, float* host, std::vector<int64_t>* token_of_row) {
  State& st = *state_;
  st.HostPlan(l);
  const int64_t A = st.layers[l].rows.offsets.back();
  // Both copies on the stream, one wait.
  std::vector<int32_t> tokens(A);
  if (A > 0) {
    HM_CUDA_CHECK(cudaMemcpyAsync(tokens.data(), st.layers[l].token_of_row.data(), sizeof(int32_t) * A,
                                  cudaMemcpyDeviceToHost, st.m.s()));
    if (host != nullptr)
      HM_CUDA_CHECK(cudaMemcpyAsync(host, st.layers[l].rows.xp.data(), sizeof(float) * A * st.m.config.hidden_size,
                                    cudaMemcpyDeviceToHost, st.m.s()));
    HM_CUDA_CHECK(cudaStreamSynchronize(st.m.s()));
  }
  token_of_row->assign(tokens.begin(), tokens.end());
}
void DeviceMicroBatch::UploadExpertOutputs(int64_t l, const float* host) {
  State& st = *state_;
  st.HostPlan(l);
  st.m.ToDevice(host, st.layers[l].rows.y.data(), st.layers[l].rows.offsets.back() * st.m.config.hidden_size);
}
void DeviceMicroBatch::DownloadOutputGrads(int64_t l, float* host) {
  State& st = *state_;
  st.HostPlan(l);
  st.m.ToHost(st.layers[l].rows.dy.data(), host, st.layers[l].rows.offsets.back() * st.m.config.hidden_size);
}
void DeviceMicroBatch::UploadDispatchedGrads(int64_t l, const float* host) {
  State& st = *state_;
  st.HostPlan(l);
  st.m.ToDevice(host, st.layers[l].rows.dxp.data(), st.layers[l].rows.offsets.back() * st.m.config.hidden_size);
}

model::DeviceRows DeviceMicroBatch::Rows(int64_t l) {
  ExpertRows& r = state_->layers[l].rows;
  return {r.xp.data(), r.y.data(), r.dy.data(), r.dxp.data()};
}

const std::vector<int64_t>& DeviceMicroBatch::counts(int64_t l) const {
  state_->HostPlan(l);
  return state_->layers[l].rows.counts;
}
const std::vector<int64_t>& DeviceMicroBatch::offsets(int64_t l) const {
  state_->HostPlan(l);
  return state_->layers[l].rows.offsets;
}
std::vector<std::vector<int64_t>> DeviceMicroBatch::ExpertCounts() const {
  std::vector<std::vector<int64_t>> out;
  for (size_t l = 0; l < state_->layers.size(); ++l) out.push_back(counts(static_cast<int64_t>(l)));
  return out;
}
int64_t DeviceMicroBatch::tokens() const { return state_->tokens; }

std::vector<float> DeviceMicroBatch::DownloadLogits() {
  State& st = *state_;
  std::vector<float> out(st.logits.size());
  st.m.ToHost(st.logits.data(), out.data(), static_cast<int64_t>(out.size()));
  return out;
}

}  // namespace hetermoe::backend
