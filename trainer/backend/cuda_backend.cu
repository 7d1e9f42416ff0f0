// Notation as model/mixtral.cc: B sequences of T tokens, N = B*T; d hidden,
// H/KV heads of width hd, E experts with top-k routing and width f, V
// vocabulary, A = N*k (token, slot) assignments. Every step below names the
// CPU call it mirrors, so the two files read side by side.
//
// Host code only (the kernels live in kernels/); this file is compiled by
// nvcc because the kernel headers declare __global__ functions.
#include "trainer/backend/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/adamw.cuh"
#include "kernels/attention.cuh"
#include "kernels/cast.cuh"
#include "kernels/cross_entropy.cuh"
#include "kernels/device.h"
#include "kernels/dispatch.cuh"
#include "kernels/embedding.cuh"
#include "kernels/gemm.h"
#include "kernels/grad_norm.cuh"
#include "kernels/precision.h"
#include "kernels/rmsnorm.cuh"
#include "kernels/rope.cuh"
#include "kernels/router.cuh"
#include "kernels/shared/math.h"
#include "kernels/shared/router_row.h"
#include "kernels/stream.h"
#include "kernels/swiglu.cuh"
#include "trainer/ops/rope.h"
#include "trainer/ops/router.h"
#include "trainer/util/error.h"

namespace hetermoe::backend {

using kernels::ComputeDtype;
using kernels::DeviceBuffer;

namespace {

// The 16-bit element type of a compute format (bf16 and fp16 are both two
// bytes; the buffers are raw storage, the kernels see the real type).
size_t ElementBytes(ComputeDtype dtype) { return dtype == ComputeDtype::kFp32 ? 4 : 2; }

}  // namespace

struct CudaBackend::Impl {
  // Activations one layer's backward needs, as MixtralCpu::LayerActivations.
  struct Layer {
    DeviceBuffer<float> resid_in, a, rstd1;  // [N, d], [N, d], [N]
    DeviceBuffer<float> q, k, v;             // after RoPE: [N, H*hd], [N, KV*hd] x2
    DeviceBuffer<float> attn, lse;           // [N, H*hd], [B, H, T]
    DeviceBuffer<float> h_mid, m, rstd2;     // [N, d], [N, d], [N]
    DeviceBuffer<float> probs, topk_weight, topk_sum;  // [N, E], [N, k], [N]
    DeviceBuffer<int32_t> topk_expert;                 // [N, k]
    DeviceBuffer<int32_t> counts, offsets, row_of, token_of_row;  // the dispatch plan
    std::vector<int64_t> host_counts, host_offsets;  // [E], [E+1]
    DeviceBuffer<float> xp, g1, g3, act, y;  // [A, d], [A, f] x3, [A, d]
  };

  Impl(const io::MixtralConfig& c, const model::ParameterLayout& l, const BackendOptions& o)
      : config(c), layout(l), options(o), allocator(kernels::CudaMallocBacking()) {
    std::string why;
    if (kernels::CudaDeviceCount(&why) == 0) throw Error("CUDA backend: no usable GPU (" + why + ")");
    HM_CUDA_CHECK(cudaGetDevice(&device));
    cudaDeviceProp prop{};
    HM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    device_name = prop.name;
    sm = prop.major * 10 + prop.minor;
    policy = kernels::ChoosePrecision(options.precision, sm);
    stream = std::make_unique<kernels::Stream>();
    blas = std::make_unique<kernels::BlasHandle>(stream->get());
    experts = std::make_unique<kernels::ExpertGemms>(&allocator, stream->get());
    for (auto* b : {&params, &grads, &exp_avg, &exp_avg_sq}) {
      b->Bind(&allocator);
      b->Resize(layout.total());
    }
    params16.Bind(&allocator);
    if (policy.compute != ComputeDtype::kFp32) params16.Resize(layout.total());
    for (auto& buf : cast) buf.Bind(&allocator);
    norm_partials.Bind(&allocator);
    norm_partials.Resize(kernels::kNormBlocks);
    norm_out.Bind(&allocator);
    norm_out.Resize(1);
    HM_CUDA_CHECK(cudaMemsetAsync(params.data(), 0, params.bytes(), s()));
    HM_CUDA_CHECK(cudaMemsetAsync(grads.data(), 0, grads.bytes(), s()));
    HM_CUDA_CHECK(cudaMemsetAsync(exp_avg.data(), 0, exp_avg.bytes(), s()));
    HM_CUDA_CHECK(cudaMemsetAsync(exp_avg_sq.data(), 0, exp_avg_sq.bytes(), s()));
  }

  ~Impl() {
    if (stream) cudaStreamSynchronize(stream->get());  // no kernel may outlive its buffers
  }

  cudaStream_t s() const { return stream->get(); }

  template <typename T>
  void Alloc(DeviceBuffer<T>& b, int64_t n) {
    b.Bind(&allocator);
    b.Resize(static_cast<size_t>(n));
  }

  void Resize(int64_t batch, int64_t seq_len) {
    if (batch == batch_ && seq_len == seq_len_) return;
    HM_CUDA_CHECK(cudaStreamSynchronize(s()));  // old buffers may still be in use
    batch_ = batch;
    seq_len_ = seq_len;
    tokens_ = batch * seq_len;
    const int64_t N = tokens_, d = config.hidden_size, hd = config.HeadDim();
    const int64_t H = config.num_attention_heads, KV = config.num_key_value_heads;
    const int64_t E = config.num_local_experts, k = config.num_experts_per_tok;
    const int64_t f = config.intermediate_size, V = config.vocab_size, A = N * k;
    const int64_t qd = H * hd, kvd = KV * hd;

    const ops::RopeTable table = ops::MakeRopeTable(seq_len, hd, static_cast<float>(config.rope_theta));
    Alloc(rope_cos, static_cast<int64_t>(table.cos.size()));
    Alloc(rope_sin, static_cast<int64_t>(table.sin.size()));
    HM_CUDA_CHECK(cudaMemcpyAsync(rope_cos.data(), table.cos.data(), rope_cos.bytes(), cudaMemcpyHostToDevice, s()));
    HM_CUDA_CHECK(cudaMemcpyAsync(rope_sin.data(), table.sin.data(), rope_sin.bytes(), cudaMemcpyHostToDevice, s()));

    layers.clear();
    layers.resize(config.num_hidden_layers);
    for (Layer& la : layers) {
      Alloc(la.resid_in, N * d);
      Alloc(la.a, N * d);
      Alloc(la.rstd1, N);
      Alloc(la.q, N * qd);
      Alloc(la.k, N * kvd);
      Alloc(la.v, N * kvd);
      Alloc(la.attn, N * qd);
      Alloc(la.lse, batch * H * seq_len);
      Alloc(la.h_mid, N * d);
      Alloc(la.m, N * d);
      Alloc(la.rstd2, N);
      Alloc(la.probs, N * E);
      Alloc(la.topk_weight, A);
      Alloc(la.topk_sum, N);
      Alloc(la.topk_expert, A);
      Alloc(la.counts, E);
      Alloc(la.offsets, E + 1);
      Alloc(la.row_of, A);
      Alloc(la.token_of_row, A);
      la.host_counts.assign(E, 0);
      la.host_offsets.assign(E + 1, 0);
      Alloc(la.xp, A * d);
      Alloc(la.g1, A * f);
      Alloc(la.g3, A * f);
      Alloc(la.act, A * f);
      Alloc(la.y, A * d);
    }
    Alloc(inputs, N);
    Alloc(targets, N);
    Alloc(resid_out, N * d);
    Alloc(final_normed, N * d);
    Alloc(final_rstd, N);
    Alloc(logits, N * V);
    Alloc(row_loss, N);
    Alloc(gate_logits, N * E);
    Alloc(prob_sums, config.num_hidden_layers * E);
    // Backward scratch.
    Alloc(dnormed, N * d);
    Alloc(dh, N * d);
    Alloc(dm, N * d);
    Alloc(dy, A * d);
    Alloc(dxp, A * d);
    Alloc(dweight, A);
    Alloc(dgate, N * E);
    Alloc(aux_dprob, E);
    Alloc(dq, N * qd);
    Alloc(dk, N * kvd);
    Alloc(dv, N * kvd);
    Alloc(dattn, N * qd);
    Alloc(attn_D, batch * H * seq_len);
    Alloc(dg1, A * f);
    Alloc(dg3, A * f);
  }

  // --- GEMM operands in the compute format ---
  // A weight tensor at `offset` of the parameter buffer.
  const void* Weight(int64_t offset) const {
    if (policy.compute == ComputeDtype::kFp32) return params.data() + offset;
    return reinterpret_cast<const char*>(params16.data()) + offset * 2;
  }
  // An fp32 activation [n] as a GEMM operand: itself in fp32 mode, else cast
  // into scratch slot `slot` (valid until that slot is used again; all on one
  // stream, so reuse is ordered after the GEMMs that read it).
  const void* Operand(const float* x, int64_t n, int slot) {
    if (policy.compute == ComputeDtype::kFp32) return x;
    DeviceBuffer<uint16_t>& b = cast[slot];
    if (b.size() < static_cast<size_t>(n)) b.Resize(static_cast<size_t>(n));
    if (policy.compute == ComputeDtype::kBf16)
      HM_CUDA_CHECK(kernels::LaunchCastToBf16(x, n, reinterpret_cast<__nv_bfloat16*>(b.data()), s()));
    else
      HM_CUDA_CHECK(kernels::LaunchCastToHalf(x, n, reinterpret_cast<__half*>(b.data()), s()));
    return b.data();
  }
  // Element `elem` of an operand returned by Operand() or Weight().
  const void* At(const void* base, int64_t elem) const {
    return static_cast<const char*>(base) + elem * ElementBytes(policy.compute);
  }
  void RefreshCompute16() {
    if (policy.compute == ComputeDtype::kBf16)
      HM_CUDA_CHECK(kernels::LaunchCastToBf16(params.data(), layout.total(),
                                              reinterpret_cast<__nv_bfloat16*>(params16.data()), s()));
    else if (policy.compute == ComputeDtype::kFp16)
      HM_CUDA_CHECK(kernels::LaunchCastToHalf(params.data(), layout.total(),
                                              reinterpret_cast<__half*>(params16.data()), s()));
  }

  void Linear(int64_t M, int64_t N, int64_t K, const float* x, int64_t w_offset, float* y,
              bool accumulate, int slot = 0) {
    kernels::LinearForward(blas->get(), policy.compute, M, N, K, Operand(x, M * K, slot),
                           Weight(w_offset), y, accumulate);
  }
  void LinearDx(int64_t M, int64_t N, int64_t K, const float* dy_, int64_t w_offset, float* dx,
                bool accumulate) {
    kernels::LinearBackwardInput(blas->get(), policy.compute, M, N, K, Operand(dy_, M * N, 0),
                                 Weight(w_offset), dx, accumulate);
  }
  void LinearDw(int64_t M, int64_t N, int64_t K, const float* dy_, const float* x, int64_t g_offset) {
    kernels::LinearBackwardWeight(blas->get(), policy.compute, M, N, K, Operand(dy_, M * N, 0),
                                  Operand(x, M * K, 1), grads.data() + g_offset);
  }

  model::LossParts Forward(const model::MicroBatch& mb) {
    Resize(mb.batch, mb.seq_len);
    const int64_t N = tokens_, d = config.hidden_size, hd = config.HeadDim();
    const int64_t H = config.num_attention_heads, KV = config.num_key_value_heads;
    const int64_t E = config.num_local_experts, k = config.num_experts_per_tok;
    const int64_t f = config.intermediate_size, V = config.vocab_size, L = config.num_hidden_layers;
    const float eps = static_cast<float>(config.rms_norm_eps);
    const kernels::AttentionDims dims{batch_, seq_len_, H, KV, hd};
    for (int64_t n = 0; n < N; ++n)
      if (mb.inputs[n] < 0 || mb.inputs[n] >= V || mb.targets[n] < 0 || mb.targets[n] >= V)
        throw Error("CUDA backend: token id out of range [0, " + std::to_string(V) + ") at position " +
                    std::to_string(n));
    HM_CUDA_CHECK(cudaMemcpyAsync(inputs.data(), mb.inputs, inputs.bytes(), cudaMemcpyHostToDevice, s()));
    HM_CUDA_CHECK(cudaMemcpyAsync(targets.data(), mb.targets, targets.bytes(), cudaMemcpyHostToDevice, s()));

    // h = embed_tokens[x]
    float* h = layers.empty() ? resid_out.data() : layers[0].resid_in.data();
    HM_CUDA_CHECK(kernels::LaunchEmbeddingForward(params.data() + layout.embed, inputs.data(), N, d, h, s()));

    for (int64_t l = 0; l < L; ++l) {
      Layer& la = layers[l];
      const model::LayerOffsets& lo = layout.layers[l];
      // --- attention block: h_mid = h + o_proj(attn(rope(q), rope(k), v)) ---
      HM_CUDA_CHECK(kernels::LaunchRmsNormForward(la.resid_in.data(), params.data() + lo.input_norm, N, d,
                                                  eps, la.a.data(), la.rstd1.data(), s()));
      const void* a_op = Operand(la.a.data(), N * d, 0);  // shared by q, k, v
      kernels::LinearForward(blas->get(), policy.compute, N, H * hd, d, a_op, Weight(lo.q), la.q.data(), false);
      kernels::LinearForward(blas->get(), policy.compute, N, KV * hd, d, a_op, Weight(lo.k), la.k.data(), false);
      kernels::LinearForward(blas->get(), policy.compute, N, KV * hd, d, a_op, Weight(lo.v), la.v.data(), false);
      HM_CUDA_CHECK(kernels::LaunchRope(la.q.data(), rope_cos.data(), rope_sin.data(), N, H, hd, seq_len_, false, s()));
      HM_CUDA_CHECK(kernels::LaunchRope(la.k.data(), rope_cos.data(), rope_sin.data(), N, KV, hd, seq_len_, false, s()));
      HM_CUDA_CHECK(kernels::LaunchAttentionForward(dims, la.q.data(), la.k.data(), la.v.data(),
                                                    la.attn.data(), la.lse.data(), s()));
      HM_CUDA_CHECK(cudaMemcpyAsync(la.h_mid.data(), la.resid_in.data(), la.h_mid.bytes(),
                                    cudaMemcpyDeviceToDevice, s()));
      Linear(N, d, H * hd, la.attn.data(), lo.o, la.h_mid.data(), true);

      // --- MoE block: router -> dispatch -> experts -> combine ---
      HM_CUDA_CHECK(kernels::LaunchRmsNormForward(la.h_mid.data(), params.data() + lo.post_norm, N, d, eps,
                                                  la.m.data(), la.rstd2.data(), s()));
      Linear(N, E, d, la.m.data(), lo.gate, gate_logits.data(), false);
      HM_CUDA_CHECK(kernels::LaunchRouterForward(gate_logits.data(), N, E, k, la.probs.data(),
                                                 la.topk_expert.data(), la.topk_weight.data(),
                                                 la.topk_sum.data(), s()));
      HM_CUDA_CHECK(kernels::LaunchRouterProbSums(la.probs.data(), N, E, prob_sums.data() + l * E, s()));
      HM_CUDA_CHECK(kernels::LaunchBuildDispatchPlan(la.topk_expert.data(), N, k, E, la.counts.data(),
                                                     la.offsets.data(), la.row_of.data(),
                                                     la.token_of_row.data(), s()));
      DownloadPlanSizes(la);
      HM_CUDA_CHECK(kernels::LaunchGatherRows(la.m.data(), la.token_of_row.data(), N * k, d, la.xp.data(), s()));
      const void* xp_op = Operand(la.xp.data(), N * k * d, 0);
      const auto& ex = lo.experts;
      // g1 = xp W1^T, g3 = xp W3^T, y = act W2^T: one grouped GEMM each over
      // the experts' row ranges (experts with no tokens are left out).
      experts->Forward(blas->get(), policy.compute, f, d, PerExpert(la, [&](int64_t e, int64_t r0) {
        return kernels::ExpertProblem{0, At(xp_op, r0 * d), Weight(ex[e].w1), la.g1.data() + r0 * f};
      }), false);
      experts->Forward(blas->get(), policy.compute, f, d, PerExpert(la, [&](int64_t e, int64_t r0) {
        return kernels::ExpertProblem{0, At(xp_op, r0 * d), Weight(ex[e].w3), la.g3.data() + r0 * f};
      }), false);
      HM_CUDA_CHECK(kernels::LaunchSwiGluForward(la.g1.data(), la.g3.data(), N * k * f, la.act.data(), s()));
      const void* act_op = Operand(la.act.data(), N * k * f, 1);
      experts->Forward(blas->get(), policy.compute, d, f, PerExpert(la, [&](int64_t e, int64_t r0) {
        return kernels::ExpertProblem{0, At(act_op, r0 * f), Weight(ex[e].w2), la.y.data() + r0 * d};
      }), false);
      float* h_out = (l + 1 < L) ? layers[l + 1].resid_in.data() : resid_out.data();
      HM_CUDA_CHECK(cudaMemcpyAsync(h_out, la.h_mid.data(), la.h_mid.bytes(), cudaMemcpyDeviceToDevice, s()));
      HM_CUDA_CHECK(kernels::LaunchCombine(la.y.data(), la.topk_weight.data(), la.row_of.data(), N, k, d,
                                           h_out, s()));
    }

    // --- head: logits = lm_head(norm(h)) ---
    HM_CUDA_CHECK(kernels::LaunchRmsNormForward(resid_out.data(), params.data() + layout.final_norm, N, d,
                                                eps, final_normed.data(), final_rstd.data(), s()));
    Linear(N, V, d, final_normed.data(), layout.lm_head, logits.data(), false);
    HM_CUDA_CHECK(kernels::LaunchCrossEntropyForward(logits.data(), targets.data(), N, V, row_loss.data(), s()));

    std::vector<float> host_loss(N);
    std::vector<double> host_prob_sums(L * E);
    HM_CUDA_CHECK(cudaMemcpyAsync(host_loss.data(), row_loss.data(), row_loss.bytes(), cudaMemcpyDeviceToHost, s()));
    HM_CUDA_CHECK(cudaMemcpyAsync(host_prob_sums.data(), prob_sums.data(), prob_sums.bytes(),
                                  cudaMemcpyDeviceToHost, s()));
    HM_CUDA_CHECK(cudaStreamSynchronize(s()));

    aux_counts.assign(E, 0);
    std::vector<double> aux_prob_sums(E, 0.0);
    for (int64_t l = 0; l < L; ++l)
      for (int64_t e = 0; e < E; ++e) {
        aux_counts[e] += layers[l].host_counts[e];
        aux_prob_sums[e] += host_prob_sums[l * E + e];
      }
    aux_rows = N * L;
    double ce = 0.0;
    for (float x : host_loss) ce += static_cast<double>(x);
    model::LossParts loss;
    loss.ce = ce / static_cast<double>(N);
    loss.aux = aux_rows > 0 ? ops::AuxLoss(E, aux_rows, aux_counts, aux_prob_sums) : 0.0;
    loss.total = loss.ce + config.router_aux_loss_coef * loss.aux;
    return loss;
  }

  // One problem per expert of layer `la` (make(e, first_row) fills the
  // operands; the row count comes from the dispatch plan).
  template <typename Make>
  std::vector<kernels::ExpertProblem> PerExpert(const Layer& la, Make make) const {
    std::vector<kernels::ExpertProblem> problems;
    for (int64_t e = 0; e < config.num_local_experts; ++e) {
      kernels::ExpertProblem p = make(e, la.host_offsets[e]);
      p.rows = la.host_counts[e];
      problems.push_back(p);
    }
    return problems;
  }

  // The grouped expert GEMMs take each expert's rows from the host.
  void DownloadPlanSizes(Layer& la) {
    const int64_t E = config.num_local_experts;
    std::vector<int32_t> counts32(E), offsets32(E + 1);
    HM_CUDA_CHECK(cudaMemcpyAsync(counts32.data(), la.counts.data(), sizeof(int32_t) * E,
                                  cudaMemcpyDeviceToHost, s()));
    HM_CUDA_CHECK(cudaMemcpyAsync(offsets32.data(), la.offsets.data(), sizeof(int32_t) * (E + 1),
                                  cudaMemcpyDeviceToHost, s()));
    HM_CUDA_CHECK(cudaStreamSynchronize(s()));
    for (int64_t e = 0; e < E; ++e) la.host_counts[e] = counts32[e];
    for (int64_t e = 0; e <= E; ++e) la.host_offsets[e] = offsets32[e];
  }

  void Backward(float loss_scale) {
    if (tokens_ == 0) throw Error("CUDA backend: Backward without Forward");
    const int64_t N = tokens_, d = config.hidden_size, hd = config.HeadDim();
    const int64_t H = config.num_attention_heads, KV = config.num_key_value_heads;
    const int64_t E = config.num_local_experts, k = config.num_experts_per_tok;
    const int64_t f = config.intermediate_size, V = config.vocab_size, A = N * k;
    const kernels::AttentionDims dims{batch_, seq_len_, H, KV, hd};
    // fp16: gradients of (loss_scale * scale) * loss; ClipGradNorm unscales.
    const double scale = static_cast<double>(loss_scale) * (policy.dynamic_loss_scaling ? scaler.scale() : 1.0);
    const float fscale = static_cast<float>(scale);

    // --- head ---
    HM_CUDA_CHECK(kernels::LaunchCrossEntropyBackward(logits.data(), targets.data(), N, V,
                                                      fscale / static_cast<float>(N), logits.data(), s()));
    LinearDw(N, V, d, logits.data(), final_normed.data(), layout.lm_head);
    LinearDx(N, V, d, logits.data(), layout.lm_head, dnormed.data(), false);
    HM_CUDA_CHECK(cudaMemsetAsync(dh.data(), 0, dh.bytes(), s()));
    HM_CUDA_CHECK(kernels::LaunchRmsNormBackward(dnormed.data(), resid_out.data(), params.data() + layout.final_norm,
                                                 final_rstd.data(), N, d, dh.data(),
                                                 grads.data() + layout.final_norm, s()));

    std::vector<float> host_aux_dprob(E);
    for (int64_t e = 0; e < E; ++e)
      host_aux_dprob[e] = math::AuxLossProbGrad(scale, config.router_aux_loss_coef, E, aux_counts[e], aux_rows);
    HM_CUDA_CHECK(cudaMemcpyAsync(aux_dprob.data(), host_aux_dprob.data(), aux_dprob.bytes(),
                                  cudaMemcpyHostToDevice, s()));

    for (int64_t l = config.num_hidden_layers - 1; l >= 0; --l) {
      Layer& la = layers[l];
      const model::LayerOffsets& lo = layout.layers[l];

      // --- MoE block backward: combine -> experts -> dispatch, and the router ---
      HM_CUDA_CHECK(kernels::LaunchCombineBackward(la.y.data(), la.topk_weight.data(), la.row_of.data(),
                                                   dh.data(), N, k, d, dy.data(), dweight.data(), s()));
      // dact = dy W2 (held in dg1), dW2 += dy^T act, grouped over experts;
      // experts with no tokens keep their weight gradients as they are.
      const void* dy_op = Operand(dy.data(), A * d, 0);
      const void* act_op = Operand(la.act.data(), A * f, 1);
      const auto& ex = lo.experts;
      experts->BackwardInput(blas->get(), policy.compute, d, f, PerExpert(la, [&](int64_t e, int64_t r0) {
        return kernels::ExpertProblem{0, At(dy_op, r0 * d), Weight(ex[e].w2), dg1.data() + r0 * f};
      }), false);
      experts->BackwardWeight(blas->get(), policy.compute, d, f, PerExpert(la, [&](int64_t e, int64_t r0) {
        return kernels::ExpertProblem{0, At(dy_op, r0 * d), At(act_op, r0 * f), grads.data() + ex[e].w2};
      }));
      HM_CUDA_CHECK(kernels::LaunchSwiGluBackward(la.g1.data(), la.g3.data(), dg1.data(), A * f, dg1.data(),
                                                  dg3.data(), s()));
      const void* dg1_op = Operand(dg1.data(), A * f, 0);
      const void* dg3_op = Operand(dg3.data(), A * f, 1);
      const void* xp_op = Operand(la.xp.data(), A * d, 2);
      // dW1 += dg1^T xp, dW3 += dg3^T xp, dxp = dg1 W1 + dg3 W3.
      experts->BackwardWeight(blas->get(), policy.compute, f, d, PerExpert(la, [&](int64_t e, int64_t r0) {
        return kernels::ExpertProblem{0, At(dg1_op, r0 * f), At(xp_op, r0 * d), grads.data() + ex[e].w1};
      }));
      experts->BackwardWeight(blas->get(), policy.compute, f, d, PerExpert(la, [&](int64_t e, int64_t r0) {
        return kernels::ExpertProblem{0, At(dg3_op, r0 * f), At(xp_op, r0 * d), grads.data() + ex[e].w3};
      }));
      experts->BackwardInput(blas->get(), policy.compute, f, d, PerExpert(la, [&](int64_t e, int64_t r0) {
        return kernels::ExpertProblem{0, At(dg1_op, r0 * f), Weight(ex[e].w1), dxp.data() + r0 * d};
      }), false);
      experts->BackwardInput(blas->get(), policy.compute, f, d, PerExpert(la, [&](int64_t e, int64_t r0) {
        return kernels::ExpertProblem{0, At(dg3_op, r0 * f), Weight(ex[e].w3), dxp.data() + r0 * d};
      }), true);
      HM_CUDA_CHECK(cudaMemsetAsync(dm.data(), 0, dm.bytes(), s()));
      HM_CUDA_CHECK(kernels::LaunchScatterAddRows(dxp.data(), la.row_of.data(), N, k, d, dm.data(), s()));
      // The gate's second branch: the routing weights scale the expert outputs.
      HM_CUDA_CHECK(kernels::LaunchRouterBackward(la.probs.data(), la.topk_expert.data(), la.topk_weight.data(),
                                                  la.topk_sum.data(), dweight.data(), aux_dprob.data(), N, E,
                                                  k, dgate.data(), s()));
      LinearDw(N, E, d, dgate.data(), la.m.data(), lo.gate);
      LinearDx(N, E, d, dgate.data(), lo.gate, dm.data(), true);
      HM_CUDA_CHECK(kernels::LaunchRmsNormBackward(dm.data(), la.h_mid.data(), params.data() + lo.post_norm,
                                                   la.rstd2.data(), N, d, dh.data(),
                                                   grads.data() + lo.post_norm, s()));

      // --- attention block backward ---
      LinearDw(N, d, H * hd, dh.data(), la.attn.data(), lo.o);
      LinearDx(N, d, H * hd, dh.data(), lo.o, dattn.data(), false);
      HM_CUDA_CHECK(kernels::LaunchAttentionBackward(dims, la.q.data(), la.k.data(), la.v.data(), la.attn.data(),
                                                     la.lse.data(), dattn.data(), attn_D.data(), dq.data(),
                                                     dk.data(), dv.data(), s()));
      HM_CUDA_CHECK(kernels::LaunchRope(dq.data(), rope_cos.data(), rope_sin.data(), N, H, hd, seq_len_, true, s()));
      HM_CUDA_CHECK(kernels::LaunchRope(dk.data(), rope_cos.data(), rope_sin.data(), N, KV, hd, seq_len_, true, s()));
      float* da = dm.data();  // reuse: gradient w.r.t. the normed input
      LinearDw(N, H * hd, d, dq.data(), la.a.data(), lo.q);
      LinearDw(N, KV * hd, d, dk.data(), la.a.data(), lo.k);
      LinearDw(N, KV * hd, d, dv.data(), la.a.data(), lo.v);
      LinearDx(N, H * hd, d, dq.data(), lo.q, da, false);
      LinearDx(N, KV * hd, d, dk.data(), lo.k, da, true);
      LinearDx(N, KV * hd, d, dv.data(), lo.v, da, true);
      HM_CUDA_CHECK(kernels::LaunchRmsNormBackward(da, la.resid_in.data(), params.data() + lo.input_norm,
                                                   la.rstd1.data(), N, d, dh.data(),
                                                   grads.data() + lo.input_norm, s()));
    }

    // --- embedding backward: scatter-add rows ---
    HM_CUDA_CHECK(kernels::LaunchEmbeddingBackward(dh.data(), inputs.data(), N, d, grads.data() + layout.embed, s()));
    unscaled = false;
  }

  // Sum of squares of the gradient buffer, in double.
  double GradSumOfSquares() {
    HM_CUDA_CHECK(kernels::LaunchSumOfSquares(grads.data(), layout.total(), norm_partials.data(),
                                              norm_out.data(), s()));
    double sum = 0.0;
    HM_CUDA_CHECK(cudaMemcpyAsync(&sum, norm_out.data(), sizeof(double), cudaMemcpyDeviceToHost, s()));
    HM_CUDA_CHECK(cudaStreamSynchronize(s()));
    return sum;
  }

  double ClipGradNorm(double max_norm) {
    const double loss_scale = (policy.dynamic_loss_scaling && !unscaled) ? scaler.scale() : 1.0;
    const double norm = std::sqrt(GradSumOfSquares()) / loss_scale;
    if (!std::isfinite(norm)) {
      // fp16 overflow (or a diverged run): OptimizerStep decides what to do.
      found_nonfinite = true;
      return norm;
    }
    const double factor = math::ClipCoefficient(norm, max_norm) / loss_scale;
    if (factor != 1.0)
      HM_CUDA_CHECK(kernels::LaunchScale(grads.data(), layout.total(), static_cast<float>(factor), s()));
    unscaled = true;
    return norm;
  }

  void OptimizerStep(double lr) {
    if (policy.dynamic_loss_scaling) {
      if (!unscaled && !found_nonfinite) ClipGradNorm(0.0);
      if (!scaler.Update(found_nonfinite)) return;  // skipped: parameters and step unchanged
    }
    ++optimizer_step;
    const auto& a = options.adamw;
    const math::AdamWStep step = math::MakeAdamWStep(lr, a.beta1, a.beta2, a.eps, a.weight_decay, optimizer_step);
    for (const auto& t : layout.tensors())
      HM_CUDA_CHECK(kernels::LaunchAdamW(params.data() + t.offset, grads.data() + t.offset,
                                         exp_avg.data() + t.offset, exp_avg_sq.data() + t.offset, t.numel, step,
                                         t.weight_decay, s()));
    RefreshCompute16();
  }

  io::MixtralConfig config;
  const model::ParameterLayout& layout;
  BackendOptions options;
  int device = 0, sm = 0;
  std::string device_name;
  kernels::PrecisionPolicy policy;
  kernels::CachingAllocator allocator;
  std::unique_ptr<kernels::Stream> stream;
  std::unique_ptr<kernels::BlasHandle> blas;
  std::unique_ptr<kernels::ExpertGemms> experts;

  DeviceBuffer<float> params, grads, exp_avg, exp_avg_sq;  // fp32 master state, layout order
  DeviceBuffer<uint16_t> params16;                         // bf16/fp16 copy for the GEMMs
  DeviceBuffer<uint16_t> cast[3];                          // activation operands in 16 bits
  int64_t optimizer_step = 0;
  kernels::DynamicLossScaler scaler;
  bool unscaled = true, found_nonfinite = false;

  int64_t batch_ = 0, seq_len_ = 0, tokens_ = 0;
  DeviceBuffer<float> rope_cos, rope_sin;
  DeviceBuffer<int32_t> inputs, targets;
  std::vector<Layer> layers;
  DeviceBuffer<float> resid_out, final_normed, final_rstd, logits, row_loss, gate_logits;
  DeviceBuffer<double> prob_sums, norm_partials, norm_out;
  DeviceBuffer<float> dnormed, dh, dm, dy, dxp, dweight, dgate, aux_dprob;
  DeviceBuffer<float> dq, dk, dv, dattn, attn_D, dg1, dg3;
  std::vector<int64_t> aux_counts;
  int64_t aux_rows = 0;
};

CudaBackend::CudaBackend(const io::MixtralConfig& config, const model::ParameterLayout& layout,
                         const BackendOptions& options)
    : impl_(std::make_unique<Impl>(config, layout, options)) {}

CudaBackend::~CudaBackend() = default;

std::string CudaBackend::name() const {
  return "cuda:" + std::to_string(impl_->device) + " (" + impl_->device_name + ", sm_" +
         std::to_string(impl_->sm) + ", " + std::string(kernels::ComputeDtypeName(impl_->policy.compute)) + ")";
}

void CudaBackend::Upload(const HostState& state) {
  Impl& m = *impl_;
  const size_t n = static_cast<size_t>(m.layout.total()), bytes = sizeof(float) * n;
  if (state.params.size() != n || state.exp_avg.size() != n || state.exp_avg_sq.size() != n)
    throw Error("CUDA backend: host state does not match the parameter layout");
  HM_CUDA_CHECK(cudaMemcpyAsync(m.params.data(), state.params.data(), bytes, cudaMemcpyHostToDevice, m.s()));
  HM_CUDA_CHECK(cudaMemcpyAsync(m.exp_avg.data(), state.exp_avg.data(), bytes, cudaMemcpyHostToDevice, m.s()));
  HM_CUDA_CHECK(cudaMemcpyAsync(m.exp_avg_sq.data(), state.exp_avg_sq.data(), bytes, cudaMemcpyHostToDevice, m.s()));
  m.optimizer_step = state.optimizer_step;
  m.RefreshCompute16();
  HM_CUDA_CHECK(cudaStreamSynchronize(m.s()));
}

void CudaBackend::Download(HostState* state) {
  Impl& m = *impl_;
  const size_t n = static_cast<size_t>(m.layout.total());
  state->params.resize(n);
  state->exp_avg.resize(n);
  state->exp_avg_sq.resize(n);
  HM_CUDA_CHECK(cudaMemcpyAsync(state->params.data(), m.params.data(), m.params.bytes(), cudaMemcpyDeviceToHost, m.s()));
  HM_CUDA_CHECK(cudaMemcpyAsync(state->exp_avg.data(), m.exp_avg.data(), m.exp_avg.bytes(), cudaMemcpyDeviceToHost, m.s()));
  HM_CUDA_CHECK(cudaMemcpyAsync(state->exp_avg_sq.data(), m.exp_avg_sq.data(), m.exp_avg_sq.bytes(),
                                cudaMemcpyDeviceToHost, m.s()));
  HM_CUDA_CHECK(cudaStreamSynchronize(m.s()));
  state->optimizer_step = m.optimizer_step;
}

void CudaBackend::ZeroGrads() {
  Impl& m = *impl_;
  HM_CUDA_CHECK(cudaMemsetAsync(m.grads.data(), 0, m.grads.bytes(), m.s()));
  m.unscaled = true;  // zero is zero at any scale
  m.found_nonfinite = false;
}

model::LossParts CudaBackend::Forward(const model::MicroBatch& batch) { return impl_->Forward(batch); }
void CudaBackend::Backward(float loss_scale) { impl_->Backward(loss_scale); }

model::LossParts CudaBackend::ForwardBackward(const model::MicroBatch& batch, float loss_scale) {
  const model::LossParts loss = impl_->Forward(batch);
  impl_->Backward(loss_scale);
  return loss;
}

std::vector<std::vector<int64_t>> CudaBackend::ExpertCounts() const {
  std::vector<std::vector<int64_t>> counts;
  for (const auto& la : impl_->layers) counts.push_back(la.host_counts);
  return counts;
}

double CudaBackend::ClipGradNorm(double max_norm) { return impl_->ClipGradNorm(max_norm); }
void CudaBackend::OptimizerStep(double lr) { impl_->OptimizerStep(lr); }

std::vector<float> CudaBackend::DownloadGrads() {
  Impl& m = *impl_;
  std::vector<float> g(m.layout.total());
  HM_CUDA_CHECK(cudaMemcpyAsync(g.data(), m.grads.data(), m.grads.bytes(), cudaMemcpyDeviceToHost, m.s()));
  HM_CUDA_CHECK(cudaStreamSynchronize(m.s()));
  return g;
}

std::vector<float> CudaBackend::DownloadLogits() {
  Impl& m = *impl_;
  std::vector<float> out(m.logits.size());
  HM_CUDA_CHECK(cudaMemcpyAsync(out.data(), m.logits.data(), m.logits.bytes(), cudaMemcpyDeviceToHost, m.s()));
  HM_CUDA_CHECK(cudaStreamSynchronize(m.s()));
  return out;
}

int64_t CudaBackend::skipped_steps() const { return impl_->scaler.skipped_steps(); }

std::unique_ptr<Backend> MakeCudaBackend(const io::MixtralConfig& config, const model::ParameterLayout& layout,
                                         const BackendOptions& options) {
  return std::make_unique<CudaBackend>(config, layout, options);
}

}  // namespace hetermoe::backend
