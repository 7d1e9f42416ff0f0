#include "trainer/optim/adamw.h"

#include <cmath>

#include "kernels/shared/math.h"

namespace hetermoe::optim {

AdamW::AdamW(const model::ParameterLayout& layout, AdamWOptions options)
    : AdamW(layout, options, std::vector<bool>(layout.tensors().size(), true)) {}

AdamW::AdamW(const model::ParameterLayout& layout, AdamWOptions options, const std::vector<bool>& with_moments)
    : layout_(layout), options_(options) {
  const auto& tensors = layout.tensors();
  moment_offset_.assign(tensors.size(), -1);
  int64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i)
    if (i < with_moments.size() && with_moments[i]) {
      moment_offset_[i] = total;
      total += tensors[i].numel;
    }
  exp_avg_.assign(total, 0.0f);
  exp_avg_sq_.assign(total, 0.0f);
}

void AdamW::Step(float* params, const float* grads, double lr, const std::vector<bool>* only) {
  ++step_;
  const math::AdamWStep s = math::MakeAdamWStep(lr, options_.beta1, options_.beta2, options_.eps,
                                                options_.weight_decay, step_);
  const auto& tensors = layout_.tensors();
  for (size_t ti = 0; ti < tensors.size(); ++ti) {
    if ((only && !(*only)[ti]) || moment_offset_[ti] < 0) continue;
    const auto& t = tensors[ti];
    float* p = params + t.offset;
    const float* g = grads + t.offset;
    float* m = exp_avg_.data() + moment_offset_[ti];
    float* v = exp_avg_sq_.data() + moment_offset_[ti];
    const bool decay = t.weight_decay;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < t.numel; ++i) math::AdamWUpdate(p[i], g[i], m[i], v[i], s, decay);
  }
}

double GlobalGradNorm(const float* grads, int64_t n) {
  double sum = 0.0;
#pragma omp parallel for reduction(+ : sum) schedule(static)
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(grads[i]) * grads[i];
  return std::sqrt(sum);
}

double ClipGradNorm(float* grads, int64_t n, double max_norm) {
  const double norm = GlobalGradNorm(grads, n);
  const double coef = math::ClipCoefficient(norm, max_norm);
  if (coef < 1.0) {
    const float c = static_cast<float>(coef);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) grads[i] *= c;
  }
  return norm;
}

}  // namespace hetermoe::optim
