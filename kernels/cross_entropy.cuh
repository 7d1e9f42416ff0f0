// Next-token cross-entropy over logits[N, V] on the GPU. CPU twin:
// trainer/ops/cross_entropy; the gradient formula is kernels/shared/math.h's
// CrossEntropyGrad.
//
// One block per row: block reductions give the row's max and sum of
// exponentials. Forward writes the per-row loss (the caller averages, in
// double, on the host); backward writes (softmax - onehot) * scale, in place
// when dlogits == logits (each element is read before it is written, and the
// row's reductions finish before any write).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace hetermoe::kernels {

// --- kernels ---
__global__ void CrossEntropyForwardKernel(const float* logits, const int32_t* targets, int64_t V,
                                          float* row_loss);
__global__ void CrossEntropyBackwardKernel(const float* logits, const int32_t* targets, int64_t V,
                                           float scale, float* dlogits);

// --- launchers ---
cudaError_t LaunchCrossEntropyForward(const float* logits, const int32_t* targets, int64_t N,
                                      int64_t V, float* row_loss, cudaStream_t stream);
cudaError_t LaunchCrossEntropyBackward(const float* logits, const int32_t* targets, int64_t N,
                                       int64_t V, float scale, float* dlogits, cudaStream_t stream);

}  // namespace hetermoe::kernels
