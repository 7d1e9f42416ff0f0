// The CUDA StageDevice (model/stages.h) for the distributed engine: one
// DeviceModel per rank, a DeviceMicroBatch per micro-batch on attention
// ranks, an ExpertRows per expert block on owner ranks. Rows that cross
// ranks go through host buffers (fp32), exchanged by the engine's
// communicator; parameters and gradients are copied to and from the
// engine's host buffers once per step (gradients before the all-reduce,
// the tensors this rank updated after the optimizer).
//
// Precision: fp32, bf16 on sm_80+, or fp16 with dynamic loss scaling ("auto":
// bf16 on sm_80+, fp16 below, as single-process). The scale lives in each
// rank's DeviceModel; the engine keeps the ranks' scales equal by giving
// every rank the same overflow verdict each step (UpdateLossScale).
#include <cuda_runtime.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels/cuda_check.h"
#include "kernels/adamw.cuh"
#include "kernels/device.h"
#include "kernels/grad_norm.cuh"
#include "kernels/shared/math.h"
#include "trainer/backend/cuda_model.h"
#include "trainer/backend/cuda_stages.h"
#ifdef HETERMOE_HAVE_NCCL
#include "trainer/backend/cuda_exchange.h"
#endif

namespace hetermoe::backend {
namespace {

class CudaMicroBatchStages final : public model::MicroBatchStages {
 public:
  CudaMicroBatchStages(DeviceModel& m, std::shared_ptr<AttentionActivations> recompute,
                       std::shared_ptr<const model::ExpertOrder> order)
      : m_(m), mb_(m) {
    if (recompute) mb_.RecomputeAttention(std::move(recompute));
    mb_.SetExpertOrder(std::move(order));
    const auto L = static_cast<size_t>(m.config.num_hidden_layers);
    plans_.resize(L);
    xp_.resize(L);
    y_.resize(L);
    dy_.resize(L);
    dxp_.resize(L);
  }
  void EmbedForward(const model::MicroBatch& batch) override { mb_.EmbedForward(batch); }
  void AttentionForward(int64_t l) override {
    mb_.AttentionForward(l);
    ops::DispatchPlan& p = plans_[l];
    p.tokens = mb_.tokens();
    p.slots = m_.config.num_experts_per_tok;
    p.experts = m_.config.num_local_experts;
    p.counts = mb_.counts(l);
    p.offsets = mb_.offsets(l);
    if (!host_rows_) {
      mb_.DownloadDispatched(l, nullptr, &p.token_of_row);  // tokens: for the engine's deduplication
      return;
    }
    const size_t n = static_cast<size_t>(p.tokens * p.slots * m_.config.hidden_size);
    for (auto* v : {&xp_[l], &y_[l], &dy_[l], &dxp_[l]}) v->resize(n);
    mb_.DownloadDispatched(l, xp_[l].data(), &p.token_of_row);
  }
  void CombineForward(int64_t l) override {
    if (host_rows_) mb_.UploadExpertOutputs(l, y_[l].data());
    mb_.CombineForward(l);
  }
  model::LossParts HeadForward() override { return mb_.HeadForward(); }
  void HeadBackward(float loss_scale) override { mb_.HeadBackward(loss_scale); }
  void CombineBackward(int64_t l) override {
    mb_.CombineBackward(l);
    if (host_rows_) mb_.DownloadOutputGrads(l, dy_[l].data());
  }
  void AttentionBackward(int64_t l) override {
    if (host_rows_) mb_.UploadDispatchedGrads(l, dxp_[l].data());
    mb_.AttentionBackward(l);
  }
  void EmbedBackward() override { mb_.EmbedBackward(); }
  const ops::DispatchPlan& plan(int64_t l) const override { return plans_[l]; }
  std::vector<float>& dispatched(int64_t l) override { return xp_[l]; }
  std::vector<float>& expert_outputs(int64_t l) override { return y_[l]; }
  std::vector<float>& expert_output_grads(int64_t l) override { return dy_[l]; }
  std::vector<float>& dispatched_grads(int64_t l) override { return dxp_[l]; }
  std::vector<std::vector<int64_t>> ExpertCounts() const override { return mb_.ExpertCounts(); }
  void SetHostRows(bool on) override { host_rows_ = on; }
  model::DeviceRows device_rows(int64_t l) override { return mb_.Rows(l); }

 private:
  DeviceModel& m_;
  DeviceMicroBatch mb_;
  bool host_rows_ = true;
  std::vector<ops::DispatchPlan> plans_;
  std::vector<std::vector<float>> xp_, y_, dy_, dxp_;  // [L][A * d] host copies of what crosses ranks
};

class CudaExpertBlock final : public model::ExpertBlock {
 public:
  CudaExpertBlock(DeviceModel& m, bool recompute) : m_(m), recompute_(recompute) {
    rows_.Bind(m);
    scratch_.Bind(&m.allocator);
  }
  const float* Forward(int64_t layer, const ops::DispatchPlan& plan, int64_t first, int64_t count,
                       const float* xp) override {
    rows_.layer = layer;
    rows_.first = first;
    rows_.count = count;
    rows_.counts = plan.counts;
    rows_.offsets = plan.offsets;
    const int64_t n = plan.offsets.back() * m_.config.hidden_size;
    rows_.Resize(m_, plan.offsets.back(), true);
    m_.ToDevice(xp, rows_.xp.data(), n);
    rows_.Forward(m_);
    if (recompute_) rows_.ReleaseActivations();
    y_.resize(static_cast<size_t>(n));
    m_.ToHost(rows_.y.data(), y_.data(), n);
    return y_.data();
  }
  const float* Backward(const float* dy) override {
    const int64_t n = rows_.offsets.back() * m_.config.hidden_size;
    m_.ToDevice(dy, rows_.dy.data(), n);
    BackwardOnDevice();
    dxp_.resize(static_cast<size_t>(n));
    m_.ToHost(rows_.dxp.data(), dxp_.data(), n);
    return dxp_.data();
  }
  model::DeviceRows PrepareOnDevice(int64_t layer, const ops::DispatchPlan& plan, int64_t first,
                                    int64_t count) override {
    rows_.layer = layer;
    rows_.first = first;
    rows_.count = count;
    rows_.counts = plan.counts;
    rows_.offsets = plan.offsets;
    rows_.Resize(m_, plan.offsets.back(), true);
    return {rows_.xp.data(), rows_.y.data(), rows_.dy.data(), rows_.dxp.data()};
  }
  model::DeviceRows RowsOnDevice(int64_t rows) override {
    const auto n = static_cast<size_t>(rows * m_.config.hidden_size);
    if (scratch_.size() < n) scratch_.Resize(n);
    return {scratch_.data(), nullptr, nullptr, nullptr};
  }
  void ForwardOnDevice() override {
    rows_.Forward(m_);
    if (recompute_) rows_.ReleaseActivations();
  }
  // Recompute: the forward again first (y is rewritten with the same values;
  // what was sent of it was copied out on this stream before).
  void BackwardOnDevice() override {
    if (recompute_) {
      rows_.Resize(m_, rows_.offsets.back(), true);
      rows_.Forward(m_);
    }
    rows_.Backward(m_);
    if (recompute_) rows_.ReleaseActivations();
  }

 private:
  kernels::DeviceBuffer<float> scratch_;  // RowsOnDevice
  DeviceModel& m_;
  bool recompute_;
  ExpertRows rows_;
  std::vector<float> y_, dxp_;
};

class CudaStageDevice final : public model::StageDevice {
 public:
  CudaStageDevice(const io::MixtralConfig& config, const model::ParameterLayout& layout, const BackendOptions& options)
      : m_(config, layout, options) {
    norm_partials_.Bind(&m_.allocator);
    norm_partials_.Resize(kernels::kNormBlocks);
    norm_out_.Bind(&m_.allocator);
  }
  std::string name() const override { return m_.Describe(); }
  std::string precision() const override { return std::string(kernels::ComputeDtypeName(m_.policy.compute)); }
  std::unique_ptr<model::MicroBatchStages> NewMicroBatch() override {
    // Micro-batches run their stages in order on the model's stream, so they
    // can share one set of recomputed attention activations.
    if (recompute_attention_ && !attention_) attention_ = std::make_shared<AttentionActivations>();
    return std::make_unique<CudaMicroBatchStages>(m_, recompute_attention_ ? attention_ : nullptr, expert_order_);
  }
  std::unique_ptr<model::ExpertBlock> NewExpertBlock() override {
    return std::make_unique<CudaExpertBlock>(m_, recompute_experts_);
  }
  void SetParams(const float* host, const std::vector<size_t>& tensors) override {
    for (size_t i : tensors) {
      const auto& t = m_.layout.tensors()[i];
      HM_CUDA_CHECK(cudaMemcpyAsync(m_.params.data() + t.offset, host + t.offset, sizeof(float) * t.numel,
                                    cudaMemcpyHostToDevice, m_.s()));
    }
    m_.RefreshCompute16();
    HM_CUDA_CHECK(cudaStreamSynchronize(m_.s()));
  }
  void ZeroGrads() override { HM_CUDA_CHECK(cudaMemsetAsync(m_.grads.data(), 0, m_.grads.bytes(), m_.s())); }
  void GetGrads(float* host) override { m_.ToHost(m_.grads.data(), host, m_.layout.total()); }
  bool ScalesLoss() const override { return m_.policy.dynamic_loss_scaling; }
  double LossScale() const override { return m_.policy.dynamic_loss_scaling ? m_.scaler.scale() : 1.0; }
  bool UpdateLossScale(bool found_nonfinite) override {
    return m_.policy.dynamic_loss_scaling ? m_.scaler.Update(found_nonfinite) : true;
  }
#ifdef HETERMOE_HAVE_NCCL
  bool HasRowExchange() const override { return true; }
  std::string NewExchangeId() override { return NewRowExchangeId(); }
  size_t NewExchangeIdBytes() const override { return RowExchangeIdBytes(); }
  std::unique_ptr<model::GradReducer> NewGradReducer(const std::string& id, int rank, int size,
                                                     std::chrono::milliseconds timeout) override {
    return MakeCudaGradReducer(m_, id, rank, size, timeout);
  }
  bool HasOptimizer() const override { return true; }
  std::unique_ptr<model::RowExchange> NewRowExchange(const std::vector<std::string>& ids, int rank, int size,
                                                     std::chrono::milliseconds timeout) override {
    return MakeCudaRowExchange(m_, ids, rank, size, timeout);
  }

  void SetMomentTensors(const std::vector<bool>& with_moments) override {
    const auto& ts = m_.layout.tensors();
    moment_offset_.assign(ts.size(), -1);
    int64_t total = 0;
    for (size_t i = 0; i < ts.size(); ++i)
      if (i < with_moments.size() && with_moments[i]) {
        moment_offset_[i] = total;
        total += ts[i].numel;
      }
    for (auto* b : {&m_.exp_avg, &m_.exp_avg_sq}) {
      b->Free();
      if (total > 0) b->Resize(static_cast<size_t>(total));
    }
  }
  int64_t MomentFloats() const {
    if (moment_offset_.empty()) return m_.layout.total();
    return static_cast<int64_t>(m_.exp_avg.size());
  }
  int64_t MomentOffset(size_t i) const {
    return moment_offset_.empty() ? m_.layout.tensors()[i].offset : moment_offset_[i];
  }
  void SetState(const float* params, const float* exp_avg, const float* exp_avg_sq, int64_t step) override {
    const size_t bytes = sizeof(float) * static_cast<size_t>(m_.layout.total());
    const size_t moment_bytes = sizeof(float) * static_cast<size_t>(MomentFloats());
    HM_CUDA_CHECK(cudaMemcpyAsync(m_.params.data(), params, bytes, cudaMemcpyHostToDevice, m_.s()));
    if (moment_bytes > 0) {
      HM_CUDA_CHECK(cudaMemcpyAsync(m_.exp_avg.data(), exp_avg, moment_bytes, cudaMemcpyHostToDevice, m_.s()));
      HM_CUDA_CHECK(
          cudaMemcpyAsync(m_.exp_avg_sq.data(), exp_avg_sq, moment_bytes, cudaMemcpyHostToDevice, m_.s()));
    }
    m_.optimizer_step = step;
    m_.RefreshCompute16();
    HM_CUDA_CHECK(cudaStreamSynchronize(m_.s()));
  }
  void GetState(float* params, float* exp_avg, float* exp_avg_sq) override {
    m_.ToHost(m_.params.data(), params, m_.layout.total());
    if (MomentFloats() > 0) {
      m_.ToHost(m_.exp_avg.data(), exp_avg, MomentFloats());
      m_.ToHost(m_.exp_avg_sq.data(), exp_avg_sq, MomentFloats());
    }
  }
  // One deterministic sum of squares per range, added on the host in order.
  double GradSquares(const std::vector<model::BufferRange>& ranges) override {
    if (ranges.empty()) return 0.0;
    if (norm_out_.size() < ranges.size()) norm_out_.Resize(ranges.size());
    for (size_t i = 0; i < ranges.size(); ++i)
      HM_CUDA_CHECK(kernels::LaunchSumOfSquares(m_.grads.data() + ranges[i].offset, ranges[i].count,
                                                norm_partials_.data(), norm_out_.data() + i, m_.s()));
    std::vector<double> sums(ranges.size());
    HM_CUDA_CHECK(cudaMemcpyAsync(sums.data(), norm_out_.data(), sizeof(double) * sums.size(),
                                  cudaMemcpyDeviceToHost, m_.s()));
    HM_CUDA_CHECK(cudaStreamSynchronize(m_.s()));
    double total = 0.0;
    for (double s : sums) total += s;
    return total;
  }
  void ScaleGrads(float factor) override {
    if (factor != 1.0f) HM_CUDA_CHECK(kernels::LaunchScale(m_.grads.data(), m_.layout.total(), factor, m_.s()));
  }
  void AdamWStep(double lr) override {
    ++m_.optimizer_step;
    const auto& a = m_.options.adamw;
    const math::AdamWStep step = math::MakeAdamWStep(lr, a.beta1, a.beta2, a.eps, a.weight_decay, m_.optimizer_step);
    const auto& ts = m_.layout.tensors();
    for (size_t i = 0; i < ts.size(); ++i) {
      const auto& t = ts[i];
      const int64_t mo = MomentOffset(i);
      if (mo < 0) continue;  // ZeRO-1: another rank's shard
      HM_CUDA_CHECK(kernels::LaunchAdamW(m_.params.data() + t.offset, m_.grads.data() + t.offset,
                                         m_.exp_avg.data() + mo, m_.exp_avg_sq.data() + mo, t.numel, step,
                                         t.weight_decay, m_.s()));
    }
    m_.RefreshCompute16();
  }
  void SumParameterShards(model::GradReducer* reducer, const std::vector<model::BufferRange>& ranges,
                          const std::vector<bool>& mine) override {
    int64_t n = 0;
    for (const auto& r : ranges) n += r.count;
    if (n == 0 || reducer == nullptr) return;
    kernels::DeviceBuffer<float> packed(&m_.allocator, static_cast<size_t>(n));
    int64_t at = 0;
    for (size_t i = 0; i < ranges.size(); ++i) {
      const auto& r = ranges[i];
      if (mine[i])
        HM_CUDA_CHECK(cudaMemcpyAsync(packed.data() + at, m_.params.data() + r.offset, sizeof(float) * r.count,
                                      cudaMemcpyDeviceToDevice, m_.s()));
      else
        HM_CUDA_CHECK(cudaMemsetAsync(packed.data() + at, 0, sizeof(float) * r.count, m_.s()));
      at += r.count;
    }
    reducer->SumInPlace(packed.data(), n);
    at = 0;
    for (const auto& r : ranges) {
      HM_CUDA_CHECK(cudaMemcpyAsync(m_.params.data() + r.offset, packed.data() + at, sizeof(float) * r.count,
                                    cudaMemcpyDeviceToDevice, m_.s()));
      at += r.count;
    }
    m_.RefreshCompute16();
    HM_CUDA_CHECK(cudaStreamSynchronize(m_.s()));  // `packed` goes back to the allocator
  }
#endif

 private:
  DeviceModel m_;
  std::shared_ptr<AttentionActivations> attention_;  // train.recompute attention (after m_: freed first)
#ifdef HETERMOE_HAVE_NCCL
  kernels::DeviceBuffer<double> norm_partials_, norm_out_;
  std::vector<int64_t> moment_offset_;  // ZeRO-1: per tensor, -1 without moments; empty = every tensor, in place
#endif
};

}  // namespace

std::unique_ptr<model::StageDevice> MakeCudaStageDevice(const io::MixtralConfig& config,
                                                        const model::ParameterLayout& layout,
                                                        const BackendOptions& options) {
  std::string why;
  const int gpus = kernels::CudaDeviceCount(&why);
  if (gpus == 0) throw Error("CUDA backend: no usable GPU (" + why + ")");
  // Ranks launched together on one machine take one GPU each.
  if (const char* local = std::getenv("LOCAL_RANK"); local && *local && gpus > 1)
    HM_CUDA_CHECK(cudaSetDevice(std::atoi(local) % gpus));
  int device = 0;
  HM_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  HM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  const int sm = prop.major * 10 + prop.minor;
  BackendOptions o = options;
  if (o.precision == "auto") o.precision = sm >= 80 ? "bf16" : "fp16";
  return std::make_unique<CudaStageDevice>(config, layout, o);
}

}  // namespace hetermoe::backend
