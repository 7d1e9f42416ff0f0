// AdamW on the GPU: one thread per element, the update itself is the shared
// hetermoe::math::AdamWUpdate that the CPU optimizer also runs.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/shared/math.h"

namespace hetermoe::kernels {

// --- kernels ---
__global__ void AdamWKernel(float* params, const float* grads, float* exp_avg, float* exp_avg_sq,
                            int64_t n, math::AdamWStep step, bool decay);

// --- launchers ---
cudaError_t LaunchAdamW(float* params, const float* grads, float* exp_avg, float* exp_avg_sq,
                        int64_t n, const math::AdamWStep& step, bool decay, cudaStream_t stream);

}  // namespace hetermoe::kernels
