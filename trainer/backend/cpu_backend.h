// The CPU backend: MixtralCpu for forward/backward and the CPU AdamW. The
// reference every other backend is tested against.
#pragma once

#include "trainer/backend/backend.h"

namespace hetermoe::backend {

class CpuBackend final : public MicroBatchBackend {
 public:
  CpuBackend(const io::MixtralConfig& config, const model::ParameterLayout& layout,
             const optim::AdamWOptions& adamw);
  std::string name() const override { return "cpu"; }
  void Upload(const HostState& state) override;
  void Download(HostState* state) override;
  void ZeroGrads() override;
  model::LossParts ForwardBackward(const model::MicroBatch& batch, float loss_scale) override;
  model::LossParts Forward(const model::MicroBatch& batch) override { return model_.Forward(params_.data(), batch); }
  std::vector<std::vector<int64_t>> ExpertCounts() const override { return model_.ExpertCounts(); }
  double ClipGradNorm(double max_norm) override;
  void OptimizerStep(double lr) override;

  // Direct access for the distributed engine and tests.
  std::vector<float>& params() { return params_; }
  std::vector<float>& grads() { return grads_; }

 private:
  const model::ParameterLayout& layout_;
  model::MixtralCpu model_;
  optim::AdamW adamw_;
  std::vector<float> params_, grads_;
};

}  // namespace hetermoe::backend
