#include "kernels/adamw.cuh"
#include "kernels/common.cuh"

namespace hetermoe::kernels {

__global__ void AdamWKernel(float* params, const float* grads, float* exp_avg, float* exp_avg_sq,
                            int64_t n, math::AdamWStep step, bool decay) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) math::AdamWUpdate(params[i], grads[i], exp_avg[i], exp_avg_sq[i], step, decay);
}

cudaError_t LaunchAdamW(float* params, const float* grads, float* exp_avg, float* exp_avg_sq,
                        int64_t n, const math::AdamWStep& step, bool decay, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const auto blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  HM_LAUNCH(AdamWKernel, blocks, kThreads, 0, stream)(params, grads, exp_avg, exp_avg_sq, n, step, decay);
  return cudaGetLastError();
}

}  // namespace hetermoe::kernels
