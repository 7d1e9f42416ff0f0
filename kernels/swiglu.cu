#include "kernels/common.cuh"
#include "kernels/shared/math.h"
#include "kernels/swiglu.cuh"

namespace hetermoe::kernels {

__global__ void SwiGluForwardKernel(const float* g1, const float* g3, int64_t n, float* act) {
  const int64_t i = GlobalThreadIndex();
  if (i < n) act[i] = math::SwiGlu(g1[i], g3[i]);
}

__global__ void SwiGluBackwardKernel(const float* g1, const float* g3, const float* dact, int64_t n,
                                     float* dg1, float* dg3) {
  const int64_t i = GlobalThreadIndex();
  if (i >= n) return;
  float a, b;
  math::SwiGluBackward(g1[i], g3[i], dact[i], a, b);
  dg1[i] = a;
  dg3[i] = b;
}

cudaError_t LaunchSwiGluForward(const float* g1, const float* g3, int64_t n, float* act,
                                cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  HM_LAUNCH(SwiGluForwardKernel, BlocksFor(n, kThreadsPerBlock), kThreadsPerBlock, 0, stream)(g1, g3, n, act);
  return cudaGetLastError();
}

cudaError_t LaunchSwiGluBackward(const float* g1, const float* g3, const float* dact, int64_t n,
                                 float* dg1, float* dg3, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  HM_LAUNCH(SwiGluBackwardKernel, BlocksFor(n, kThreadsPerBlock), kThreadsPerBlock, 0, stream)(g1, g3, dact,
                                                                                        n, dg1, dg3);
  return cudaGetLastError();
}

}  // namespace hetermoe::kernels
