// Global gradient norm and clipping on the GPU. CPU twin: optim::GlobalGradNorm
// and optim::ClipGradNorm (trainer/optim/adamw); the clip factor is
// kernels/shared/math.h's ClipCoefficient, computed on the host from the norm.
//
// The sum of squares runs in double, deterministically: a fixed grid of
// kNormBlocks blocks strides over the buffer, each block reduces its part to
// partials[block], and one block adds the partials in order. A non-finite
// gradient makes the sum inf or nan, which is how fp16 loss scaling detects
// overflow (kernels/loss_scaler.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace hetermoe::kernels {

constexpr int kNormBlocks = 256;

// --- kernels ---
__global__ void SumOfSquaresPartialKernel(const float* x, int64_t n, double* partials);
__global__ void SumPartialsKernel(const double* partials, int count, double* out);
__global__ void ScaleKernel(float* x, int64_t n, float factor);

// --- launchers ---
// *out (device) = sum x^2 in double. partials: kNormBlocks doubles of scratch.
cudaError_t LaunchSumOfSquares(const float* x, int64_t n, double* partials, double* out,
                               cudaStream_t stream);
cudaError_t LaunchScale(float* x, int64_t n, float factor, cudaStream_t stream);

}  // namespace hetermoe::kernels
