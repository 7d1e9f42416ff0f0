// RMSNorm on the GPU: y = w * x * rstd, rstd = 1 / sqrt(mean(x^2) + eps), fp32.
// CPU twin: trainer/ops/rmsnorm; the formulas are kernels/shared/math.h's
// RmsNormRstd / RmsNormBackwardShift / RmsNormInputGrad.
//
// Shapes: x, y, dy, dx [N, d]; w, dw [d]; rstd [N].
// Forward and the input gradient run one warp per row (lanes stride the row,
// a warp reduction gives the row's sum). The weight gradient is a column sum
// over the rows in tiles (kernels/column_sums.cuh: parallel over rows too,
// deterministic, no atomics), with a workspace from the caller.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace hetermoe::kernels {

// --- kernels ---
__global__ void RmsNormForwardKernel(const float* x, const float* w, int64_t N, int64_t d,
                                     float eps, float* y, float* rstd);
// dx[N, d] += input gradient.
__global__ void RmsNormBackwardInputKernel(const float* dy, const float* x, const float* w,
                                           const float* rstd, int64_t N, int64_t d, float* dx);

// --- launchers ---
cudaError_t LaunchRmsNormForward(const float* x, const float* w, int64_t N, int64_t d, float eps,
                                 float* y, float* rstd, cudaStream_t stream);
// Accumulates into dx and dw (dw[d] += sum_rows dy * x * rstd), as the CPU op
// does. `workspace`: RmsNormBackwardWorkspace(N, d) floats, for the weight
// gradient's partial sums (null when that is 0).
int64_t RmsNormBackwardWorkspace(int64_t N, int64_t d);
cudaError_t LaunchRmsNormBackward(const float* dy, const float* x, const float* w,
                                  const float* rstd, int64_t N, int64_t d, float* dx, float* dw,
                                  float* workspace, cudaStream_t stream);

}  // namespace hetermoe::kernels
