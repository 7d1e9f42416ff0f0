#include "trainer/ops/cross_entropy.h"

#include <cmath>

#include "kernels/shared/math.h"

namespace hetermoe::ops {

double CrossEntropyForward(int64_t N, int64_t V, const float* logits, const int32_t* targets) {
  double total = 0.0;
#pragma omp parallel for reduction(+ : total) schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* l = logits + n * V;
    float mx = l[0];
    for (int64_t v = 1; v < V; ++v) mx = std::max(mx, l[v]);
    float sum = 0.0f;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(l[v] - mx);
    total += static_cast<double>(mx + std::log(sum) - l[targets[n]]);
  }
  return total / static_cast<double>(N);
}

void CrossEntropyBackward(int64_t N, int64_t V, const float* logits, const int32_t* targets,
                          float scale, float* dlogits) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* l = logits + n * V;
    float* g = dlogits + n * V;
    float mx = l[0];
    for (int64_t v = 1; v < V; ++v) mx = std::max(mx, l[v]);
    float sum = 0.0f;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(l[v] - mx);
    const float inv = 1.0f / sum;
    const int32_t target = targets[n];
    for (int64_t v = 0; v < V; ++v) g[v] = math::CrossEntropyGrad(l[v], mx, inv, v == target, scale);
  }
}

}  // namespace hetermoe::ops
