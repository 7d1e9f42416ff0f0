#include "trainer/optim/adamw.h"

#include <cmath>

#include "kernels/shared/math.h"

namespace hetermoe::optim {

AdamW::AdamW(const model::ParameterLayout& layout, AdamWOptions options)
    : layout_(layout), options_(options), exp_avg_(layout.total(), 0.0f),
      exp_avg_sq_(layout.total(), 0.0f) {}

void AdamW::Step(float* params, const float* grads, double lr) {
  ++step_;
  math::AdamWStep s;
  s.lr = static_cast<float>(lr);
  s.beta1 = static_cast<float>(options_.beta1);
  s.beta2 = static_cast<float>(options_.beta2);
  s.eps = static_cast<float>(options_.eps);
  s.weight_decay = static_cast<float>(options_.weight_decay);
  // torch computes the bias corrections in Python doubles.
  s.bias_correction1 = static_cast<float>(1.0 - std::pow(options_.beta1, step_));
  s.bias_correction2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(options_.beta2, step_)));
  for (const auto& t : layout_.tensors()) {
    float* p = params + t.offset;
    const float* g = grads + t.offset;
    float* m = exp_avg_.data() + t.offset;
    float* v = exp_avg_sq_.data() + t.offset;
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
  if (max_norm > 0.0) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) {
      const float c = static_cast<float>(coef);
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) grads[i] *= c;
    }
  }
  return norm;
}

}  // namespace hetermoe::optim
