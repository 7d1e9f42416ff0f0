#include "trainer/backend/cpu_backend.h"

#include <algorithm>

namespace hetermoe::backend {

namespace {

// Runs `run` on each micro-batch of the step and averages its losses.
template <typename Run>
StepLoss OverMicroBatches(const StepInput& step, MicroBatchBackend& backend, Run run) {
  StepLoss out;
  const int64_t R = step.micro_batches, per = step.global_batch / R;
  const int64_t tokens = per * step.seq_len;
  for (int64_t j = 0; j < R; ++j) {
    const model::MicroBatch mb{step.inputs + j * tokens, step.targets + j * tokens, per,
                               step.seq_len};
    const model::LossParts loss = run(mb);
    out.loss += loss.total / R;
    out.ce += loss.ce / R;
    out.aux += loss.aux / R;
    const auto counts = backend.ExpertCounts();
    if (out.expert_tokens.empty())
      out.expert_tokens.assign(counts.size(), std::vector<int64_t>(counts[0].size(), 0));
    for (size_t l = 0; l < counts.size(); ++l)
      for (size_t e = 0; e < counts[l].size(); ++e) out.expert_tokens[l][e] += counts[l][e];
  }
  return out;
}

}  // namespace

StepLoss MicroBatchBackend::ComputeGradients(const StepInput& step) {
  ZeroGrads();
  const float scale = 1.0f / static_cast<float>(step.micro_batches);
  return OverMicroBatches(step, *this, [&](const model::MicroBatch& mb) { return ForwardBackward(mb, scale); });
}

StepLoss MicroBatchBackend::Evaluate(const StepInput& step) {
  return OverMicroBatches(step, *this, [&](const model::MicroBatch& mb) { return Forward(mb); });
}

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
