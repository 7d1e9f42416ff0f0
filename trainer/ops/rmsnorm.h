// RMSNorm over rows of width d: y = w * x / sqrt(mean(x^2) + eps), in fp32.
#pragma once

#include <cstdint>

namespace hetermoe::ops {

// Writes y[N,d] and the per-row reciprocal RMS rstd[N] that backward needs.
void RmsNormForward(int64_t N, int64_t d, const float* x, const float* w, float eps, float* y,
                    float* rstd);
// dx[N,d] += gradient w.r.t. x; dw[d] += gradient w.r.t. w.
void RmsNormBackward(int64_t N, int64_t d, const float* dy, const float* x, const float* w,
                     const float* rstd, float* dx, float* dw);

}  // namespace hetermoe::ops
