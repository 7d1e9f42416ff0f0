#include "kernels/common.cuh"
#include "kernels/grad_norm.cuh"

namespace hetermoe::kernels {

__global__ void SumOfSquaresPartialKernel(const float* x, int64_t n, double* partials) {
  __shared__ double scratch[kWarpSize];
  double sum = 0.0;
  for (int64_t i = GlobalThreadIndex(); i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    sum += static_cast<double>(x[i]) * x[i];
  sum = BlockSum(sum, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

__global__ void SumPartialsKernel(const double* partials, int count, double* out) {
  __shared__ double scratch[kWarpSize];
  double sum = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) sum += partials[i];
  sum = BlockSum(sum, scratch);
  if (threadIdx.x == 0) *out = sum;
}

__global__ void ScaleKernel(float* x, int64_t n, float factor) {
  const int64_t i = GlobalThreadIndex();
  if (i < n) x[i] *= factor;
}

cudaError_t LaunchSumOfSquares(const float* x, int64_t n, double* partials, double* out,
                               cudaStream_t stream) {
  HM_LAUNCH(SumOfSquaresPartialKernel, kNormBlocks, kThreadsPerBlock, 0, stream)(x, n, partials);
  HM_LAUNCH(SumPartialsKernel, 1, kThreadsPerBlock, 0, stream)(partials, kNormBlocks, out);
  return cudaGetLastError();
}

cudaError_t LaunchScale(float* x, int64_t n, float factor, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  HM_LAUNCH(ScaleKernel, BlocksFor(n, kThreadsPerBlock), kThreadsPerBlock, 0, stream)(x, n, factor);
  return cudaGetLastError();
}

}  // namespace hetermoe::kernels
