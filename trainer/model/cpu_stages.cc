#include "trainer/model/cpu_stages.h"

#include <algorithm>
#include <cstring>

#include "common/error.h"

namespace hetermoe::model {
namespace {

class CpuMicroBatch final : public MicroBatchStages {
 public:
  CpuMicroBatch(const io::MixtralConfig& config, const ParameterLayout& layout, const float* params, float* grads,
                std::shared_ptr<MixtralCpu::AttentionActivations> recompute, std::shared_ptr<const ExpertOrder> order)
      : model_(config, layout), params_(params), grads_(grads) {
    if (recompute) model_.RecomputeAttention(std::move(recompute));
    model_.SetExpertOrder(std::move(order));
  }
  void EmbedForward(const MicroBatch& batch) override { model_.EmbedForward(params_, batch); }
  void AttentionForward(int64_t l) override { model_.AttentionForward(params_, l); }
  void CombineForward(int64_t l) override { model_.CombineForward(l); }
  LossParts HeadForward() override { return model_.HeadForward(params_); }
  void HeadBackward(float loss_scale) override { model_.HeadBackward(params_, grads_, loss_scale); }
  void CombineBackward(int64_t l) override { model_.CombineBackward(l); }
  void AttentionBackward(int64_t l) override { model_.AttentionBackward(params_, grads_, l); }
  void EmbedBackward() override { model_.EmbedBackward(grads_); }
  const ops::DispatchPlan& plan(int64_t l) const override { return model_.plan(l); }
  std::vector<float>& dispatched(int64_t l) override { return model_.dispatched(l); }
  std::vector<float>& expert_outputs(int64_t l) override { return model_.expert_outputs(l); }
  std::vector<float>& expert_output_grads(int64_t l) override { return model_.expert_output_grads(l); }
  std::vector<float>& dispatched_grads(int64_t l) override { return model_.dispatched_grads(l); }
  std::vector<std::vector<int64_t>> ExpertCounts() const override { return model_.ExpertCounts(); }

 private:
  MixtralCpu model_;
  const float* params_;
  float* grads_;
};

class CpuExpertBlock final : public ExpertBlock {
 public:
  CpuExpertBlock(const io::MixtralConfig& config, const ParameterLayout& layout, const float* params, float* grads,
                 bool recompute)
      : config_(config), layout_(layout), params_(params), grads_(grads), recompute_(recompute) {}

  const float* Forward(int64_t layer, const ops::DispatchPlan& plan, int64_t first, int64_t count,
                       const float* xp) override {
    layer_ = layer;
    plan_ = plan;
    first_ = first;
    count_ = count;
    xp_ = xp;
    ops::ExpertsForward(plan_, config_.hidden_size, config_.intermediate_size, first, Weights(), xp, &acts_);
    if (!recompute_) return acts_.y.data();
    // Keep the outputs (on their way to the attention rank), drop the rest.
    y_.swap(acts_.y);
    acts_ = ops::ExpertActivations{};
    return y_.data();
  }

  const float* Backward(const float* dy) override {
    std::vector<ops::ExpertGrads> grads;
    for (int64_t e = first_; e < first_ + count_; ++e) {
      const auto& eo = layout_.layers[layer_].experts[e];
      grads.push_back({grads_ + eo.w1, grads_ + eo.w2, grads_ + eo.w3});
    }
    dxp_.resize(static_cast<size_t>(plan_.offsets.back() * config_.hidden_size));
    if (recompute_)  // the same forward again, for the activations backward needs
      ops::ExpertsForward(plan_, config_.hidden_size, config_.intermediate_size, first_, Weights(), xp_, &acts_);
    ops::ExpertsBackward(plan_, config_.hidden_size, config_.intermediate_size, first_, Weights(), grads, xp_,
                         acts_, dy, dxp_.data());
    if (recompute_) acts_ = ops::ExpertActivations{};
    return dxp_.data();
  }

 private:
  std::vector<ops::ExpertWeights> Weights() const {
    std::vector<ops::ExpertWeights> w;
    for (int64_t e = first_; e < first_ + count_; ++e) {
      const auto& eo = layout_.layers[layer_].experts[e];
      w.push_back({params_ + eo.w1, params_ + eo.w2, params_ + eo.w3});
    }
    return w;
  }

  const io::MixtralConfig& config_;
  const ParameterLayout& layout_;
  const float* params_;
  float* grads_;
  int64_t layer_ = 0, first_ = 0, count_ = 0;
  ops::DispatchPlan plan_;
  const float* xp_ = nullptr;
  ops::ExpertActivations acts_;
  std::vector<float> y_;  // recompute: the outputs, kept while the activations are not
  std::vector<float> dxp_;
  bool recompute_;
};

class CpuStageDevice final : public StageDevice {
 public:
  CpuStageDevice(const io::MixtralConfig& config, const ParameterLayout& layout, const float* params, float* grads)
      : config_(config), layout_(layout), params_(params), grads_(grads) {}
  std::string name() const override { return "cpu"; }
  std::unique_ptr<MicroBatchStages> NewMicroBatch() override {
    // The engine runs one stage at a time, so every micro-batch can share
    // one set of recomputed attention activations.
    if (recompute_attention_ && !attention_)
      attention_ = std::make_shared<MixtralCpu::AttentionActivations>();
    return std::make_unique<CpuMicroBatch>(config_, layout_, params_, grads_,
                                           recompute_attention_ ? attention_ : nullptr, expert_order_);
  }
  std::unique_ptr<ExpertBlock> NewExpertBlock() override {
    return std::make_unique<CpuExpertBlock>(config_, layout_, params_, grads_, recompute_experts_);
  }
  // The device's buffers are the engine's: nothing to copy.
  void SetParams(const float* host_params, const std::vector<size_t>&) override {
    if (host_params != params_) throw Error("CPU stage device: parameters must be the buffer it was made with");
  }
  void ZeroGrads() override { std::fill(grads_, grads_ + layout_.total(), 0.0f); }
  void GetGrads(float* host_grads) override {
    if (host_grads != grads_) throw Error("CPU stage device: gradients must be the buffer it was made with");
  }

 private:
  io::MixtralConfig config_;
  const ParameterLayout& layout_;
  const float* params_;
  float* grads_;
  std::shared_ptr<MixtralCpu::AttentionActivations> attention_;  // train.recompute attention
};

}  // namespace

std::unique_ptr<StageDevice> MakeCpuStageDevice(const io::MixtralConfig& config, const ParameterLayout& layout,
                                                const float* params, float* grads) {
  return std::make_unique<CpuStageDevice>(config, layout, params, grads);
}

}  // namespace hetermoe::model

namespace hetermoe::model {

// Devices without device rows (the CPU) never get a RowExchange, so the
// engine never calls these on them.
DeviceRows ExpertBlock::PrepareOnDevice(int64_t, const ops::DispatchPlan&, int64_t, int64_t) {
  throw Error("this device has no device rows (the NCCL transport needs a GPU)");
}
DeviceRows ExpertBlock::RowsOnDevice(int64_t) { throw Error("this device has no device rows"); }
void ExpertBlock::ForwardOnDevice() { throw Error("this device has no device rows"); }
void ExpertBlock::BackwardOnDevice() { throw Error("this device has no device rows"); }

// Nor a device optimizer (the engine asks HasOptimizer first).
void StageDevice::SetState(const float*, const float*, const float*, int64_t) {
  throw Error("this device has no optimizer of its own");
}
void StageDevice::GetState(float*, float*, float*) { throw Error("this device has no optimizer of its own"); }
std::unique_ptr<GradReducer> StageDevice::NewGradReducer(const std::string&, int, int, std::chrono::milliseconds) {
  throw Error("this device has no gradient reducer");
}
double StageDevice::GradSquares(const std::vector<BufferRange>&) { throw Error("this device has no optimizer of its own"); }
void StageDevice::ScaleGrads(float) { throw Error("this device has no optimizer of its own"); }
void StageDevice::AdamWStep(double) { throw Error("this device has no optimizer of its own"); }
void StageDevice::SetMomentTensors(const std::vector<bool>&) { throw Error("this device has no optimizer of its own"); }
void StageDevice::SumParameterShards(GradReducer*, const std::vector<BufferRange>&, const std::vector<bool>&) {
  throw Error("this device has no optimizer of its own");
}

}  // namespace hetermoe::model
