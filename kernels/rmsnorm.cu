#include "kernels/common.cuh"
#include "kernels/rmsnorm.cuh"
#include "kernels/shared/math.h"

namespace hetermoe::kernels {

// Row of this warp: blockIdx.x * warps-per-block + warp index. The branch on
// row < N is warp-uniform, so the warp reductions see all 32 lanes.
__device__ __forceinline__ int64_t WarpRow() {
  return static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
}

__global__ void RmsNormForwardKernel(const float* x, const float* w, int64_t N, int64_t d,
                                     float eps, float* y, float* rstd) {
  const int64_t row = WarpRow();
  if (row >= N) return;
  const int lane = threadIdx.x % kWarpSize;
  const float* xr = x + row * d;
  float ss = 0.0f;
  for (int64_t j = lane; j < d; j += kWarpSize) ss += xr[j] * xr[j];
  const float r = math::RmsNormRstd(WarpSum(ss), d, eps);
  if (lane == 0) rstd[row] = r;
  float* yr = y + row * d;
  for (int64_t j = lane; j < d; j += kWarpSize) yr[j] = w[j] * (xr[j] * r);
}

__global__ void RmsNormBackwardInputKernel(const float* dy, const float* x, const float* w,
                                           const float* rstd, int64_t N, int64_t d, float* dx) {
  const int64_t row = WarpRow();
  if (row >= N) return;
  const int lane = threadIdx.x % kWarpSize;
  const float* xr = x + row * d;
  const float* dyr = dy + row * d;
  const float r = rstd[row];
  float dot = 0.0f;
  for (int64_t j = lane; j < d; j += kWarpSize) dot += w[j] * dyr[j] * xr[j];
  const float shift = math::RmsNormBackwardShift(r, WarpSum(dot), d);
  float* dxr = dx + row * d;
  for (int64_t j = lane; j < d; j += kWarpSize) dxr[j] += math::RmsNormInputGrad(r, w[j], dyr[j], xr[j], shift);
}

__global__ void RmsNormBackwardWeightKernel(const float* dy, const float* x, const float* rstd,
                                            int64_t N, int64_t d, float* dw) {
  const int64_t j = GlobalThreadIndex();
  if (j >= d) return;
  float sum = 0.0f;
  for (int64_t i = 0; i < N; ++i) sum += dy[i * d + j] * x[i * d + j] * rstd[i];
  dw[j] += sum;
}

cudaError_t LaunchRmsNormForward(const float* x, const float* w, int64_t N, int64_t d, float eps,
                                 float* y, float* rstd, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  HM_LAUNCH(RmsNormForwardKernel, BlocksFor(N, kWarpsPerBlock), kThreadsPerBlock, 0, stream)(x, w, N, d, eps,
                                                                                     y, rstd);
  return cudaGetLastError();
}

cudaError_t LaunchRmsNormBackward(const float* dy, const float* x, const float* w,
                                  const float* rstd, int64_t N, int64_t d, float* dx, float* dw,
                                  cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  HM_LAUNCH(RmsNormBackwardInputKernel, BlocksFor(N, kWarpsPerBlock), kThreadsPerBlock, 0, stream)(
      dy, x, w, rstd, N, d, dx);
  constexpr int kThreads = 64;
  HM_LAUNCH(RmsNormBackwardWeightKernel, BlocksFor(d, kThreads), kThreads, 0, stream)(dy, x, rstd, N, d, dw);
  return cudaGetLastError();
}

}  // namespace hetermoe::kernels
