#include "kernels/common.cuh"
#include "kernels/cross_entropy.cuh"
#include "kernels/shared/math.h"

namespace hetermoe::kernels {
namespace {

// Row max and sum of exp(logit - max) over a row, by the whole block.
__device__ __forceinline__ void RowSoftmaxStats(const float* l, int64_t V, float* scratch,
                                                float& row_max, float& sum) {
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) m = fmaxf(m, l[v]);
  row_max = BlockMax(m, scratch);
  float s = 0.0f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) s += expf(l[v] - row_max);
  sum = BlockSum(s, scratch);
}

}  // namespace

__global__ void CrossEntropyForwardKernel(const float* logits, const int32_t* targets, int64_t V,
                                          float* row_loss) {
  __shared__ float scratch[kWarpSize];
  const int64_t n = blockIdx.x;
  const float* l = logits + n * V;
  float row_max, sum;
  RowSoftmaxStats(l, V, scratch, row_max, sum);
  if (threadIdx.x == 0) row_loss[n] = row_max + logf(sum) - l[targets[n]];
}

__global__ void CrossEntropyBackwardKernel(const float* logits, const int32_t* targets, int64_t V,
                                           float scale, float* dlogits) {
  __shared__ float scratch[kWarpSize];
  const int64_t n = blockIdx.x;
  const float* l = logits + n * V;
  float row_max, sum;
  RowSoftmaxStats(l, V, scratch, row_max, sum);  // ends with a barrier: all reads done
  const float inv = 1.0f / sum;
  const int32_t target = targets[n];
  float* g = dlogits + n * V;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
    g[v] = math::CrossEntropyGrad(l[v], row_max, inv, v == target, scale);
}

cudaError_t LaunchCrossEntropyForward(const float* logits, const int32_t* targets, int64_t N,
                                      int64_t V, float* row_loss, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  HM_LAUNCH(CrossEntropyForwardKernel, static_cast<unsigned>(N), kThreadsPerBlock, 0, stream)(logits, targets,
                                                                                       V, row_loss);
  return cudaGetLastError();
}

cudaError_t LaunchCrossEntropyBackward(const float* logits, const int32_t* targets, int64_t N,
                                       int64_t V, float scale, float* dlogits, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  HM_LAUNCH(CrossEntropyBackwardKernel, static_cast<unsigned>(N), kThreadsPerBlock, 0, stream)(
      logits, targets, V, scale, dlogits);
  return cudaGetLastError();
}

}  // namespace hetermoe::kernels
