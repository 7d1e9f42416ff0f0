#include "trainer/backend/cpu_backend.h"

#include <algorithm>

namespace hetermoe::backend {

CpuBackend::CpuBackend(const io::MixtralConfig& config, const model::ParameterLayout& layout,
                       const optim::AdamWOptions& adamw)
    : layout_(layout), model_(config, layout), adamw_(layout, adamw),
      params_(layout.total(), 0.0f), grads_(layout.total(), 0.0f) {}

void CpuBackend::Upload(const HostState& s) {
  params_ = s.params;
  adamw_.exp_avg() = s.exp_avg;
  adamw_.exp_avg_sq() = s.exp_avg_sq;
  adamw_.set_step(s.optimizer_step);
}

void CpuBackend::Download(HostState* s) {
  s->params = params_;
  s->exp_avg = adamw_.exp_avg();
  s->exp_avg_sq = adamw_.exp_avg_sq();
  s->optimizer_step = adamw_.step();
}

void CpuBackend::ZeroGrads() { std::fill(grads_.begin(), grads_.end(), 0.0f); }

model::LossParts CpuBackend::ForwardBackward(const model::MicroBatch& batch, float loss_scale) {
  const model::LossParts loss = model_.Forward(params_.data(), batch);
  model_.Backward(params_.data(), grads_.data(), loss_scale);
  return loss;
}

double CpuBackend::ClipGradNorm(double max_norm) {
  return optim::ClipGradNorm(grads_.data(), layout_.total(), max_norm);
}

void CpuBackend::OptimizerStep(double lr) { adamw_.Step(params_.data(), grads_.data(), lr); }

}  // namespace hetermoe::backend
