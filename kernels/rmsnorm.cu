#include "kernels/column_sums.cuh"
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

namespace {
// Row i's term of the weight gradient of column j.
struct RmsNormWeightGradTerm {
  const float *dy, *x, *rstd;
  int64_t d;
  __device__ float operator()(int64_t i, int64_t j) const { return dy[i * d + j] * x[i * d + j] * rstd[i]; }
};
}  // namespace

cudaError_t LaunchRmsNormForward(const float* x, const float* w, int64_t N, int64_t d, float eps,
                                 float* y, float* rstd, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  HM_LAUNCH(RmsNormForwardKernel, BlocksFor(N, kWarpsPerBlock), kThreadsPerBlock, 0, stream)(x, w, N, d, eps,
                                                                                     y, rstd);
  return cudaGetLastError();
}

int64_t RmsNormBackwardWorkspace(int64_t N, int64_t d) { return ColumnSumsWorkspace(N, d); }

cudaError_t LaunchRmsNormBackward(const float* dy, const float* x, const float* w,
                                  const float* rstd, int64_t N, int64_t d, float* dx, float* dw,
                                  float* workspace, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  HM_LAUNCH(RmsNormBackwardInputKernel, BlocksFor(N, kWarpsPerBlock), kThreadsPerBlock, 0, stream)(
      dy, x, w, rstd, N, d, dx);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  return LaunchColumnSums(RmsNormWeightGradTerm{dy, x, rstd, d}, N, d, workspace, dw, true, stream);
}

}  // namespace hetermoe::kernels
