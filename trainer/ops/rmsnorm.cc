// RMSNorm forward/backward. With r = rstd and g = w * dy:
//   dx = r * g - (r^3 / d) * x * sum_j(g_j x_j),   dw = sum_rows dy * x * r.
#include "trainer/ops/rmsnorm.h"

#include <cmath>
#include <vector>

#include <omp.h>

#include "kernels/shared/math.h"

namespace hetermoe::ops {

void RmsNormForward(int64_t N, int64_t d, const float* x, const float* w, float eps, float* y,
                    float* rstd) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    const float* xi = x + i * d;
    float ss = 0.0f;
    for (int64_t j = 0; j < d; ++j) ss += xi[j] * xi[j];
    const float r = math::RmsNormRstd(ss, d, eps);
    rstd[i] = r;
    float* yi = y + i * d;
    for (int64_t j = 0; j < d; ++j) yi[j] = w[j] * (xi[j] * r);
  }
}

void RmsNormBackward(int64_t N, int64_t d, const float* dy, const float* x, const float* w,
                     const float* rstd, float* dx, float* dw) {
  const int threads = omp_get_max_threads();
  // Each thread sums its own dw, reduced at the end, so rows run in parallel.
  std::vector<float> dw_partial(static_cast<size_t>(threads) * d, 0.0f);
#pragma omp parallel
  {
    float* my_dw = dw_partial.data() + static_cast<size_t>(omp_get_thread_num()) * d;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      const float* xi = x + i * d;
      const float* dyi = dy + i * d;
      const float r = rstd[i];
      float dot = 0.0f;
      for (int64_t j = 0; j < d; ++j) dot += w[j] * dyi[j] * xi[j];
      const float c = math::RmsNormBackwardShift(r, dot, d);
      float* dxi = dx + i * d;
      for (int64_t j = 0; j < d; ++j) {
        dxi[j] += math::RmsNormInputGrad(r, w[j], dyi[j], xi[j], c);
        my_dw[j] += dyi[j] * xi[j] * r;
      }
    }
  }
  for (int t = 0; t < threads; ++t)
    for (int64_t j = 0; j < d; ++j) dw[j] += dw_partial[static_cast<size_t>(t) * d + j];
}

}  // namespace hetermoe::ops
