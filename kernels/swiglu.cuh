// The SwiGLU activation of the experts on the GPU, element-wise over [A, f]:
// act = silu(g1) * g3 and its backward. CPU twin: the element loops of
// trainer/ops/experts; the formulas are kernels/shared/math.h's SwiGlu and
// SwiGluBackward. One thread per element.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace hetermoe::kernels {

// --- kernels ---
__global__ void SwiGluForwardKernel(const float* g1, const float* g3, int64_t n, float* act);
// dg1 may alias dact (each element reads its dact before writing).
__global__ void SwiGluBackwardKernel(const float* g1, const float* g3, const float* dact, int64_t n,
                                     float* dg1, float* dg3);

// --- launchers ---
cudaError_t LaunchSwiGluForward(const float* g1, const float* g3, int64_t n, float* act,
                                cudaStream_t stream);
cudaError_t LaunchSwiGluBackward(const float* g1, const float* g3, const float* dact, int64_t n,
                                 float* dg1, float* dg3, cudaStream_t stream);

}  // namespace hetermoe::kernels
