#include "kernels/cast.cuh"
#include "kernels/common.cuh"

namespace hetermoe::kernels {

__global__ void CastToBf16Kernel(const float* x, int64_t n, __nv_bfloat16* y) {
  const int64_t i = GlobalThreadIndex();
  if (i < n) y[i] = __float2bfloat16_rn(x[i]);
}

__global__ void CastToHalfKernel(const float* x, int64_t n, __half* y) {
  const int64_t i = GlobalThreadIndex();
  if (i < n) y[i] = __float2half_rn(x[i]);
}

cudaError_t LaunchCastToBf16(const float* x, int64_t n, __nv_bfloat16* y, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  HM_LAUNCH(CastToBf16Kernel, BlocksFor(n, kThreadsPerBlock), kThreadsPerBlock, 0, stream)(x, n, y);
  return cudaGetLastError();
}

cudaError_t LaunchCastToHalf(const float* x, int64_t n, __half* y, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  HM_LAUNCH(CastToHalfKernel, BlocksFor(n, kThreadsPerBlock), kThreadsPerBlock, 0, stream)(x, n, y);
  return cudaGetLastError();
}

}  // namespace hetermoe::kernels
