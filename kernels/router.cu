#include "kernels/column_sums.cuh"
#include "kernels/common.cuh"
#include "kernels/router.cuh"
#include "kernels/shared/router_row.h"

namespace hetermoe::kernels {

__global__ void RouterForwardKernel(const float* logits, int64_t N, int64_t E, int64_t k,
                                    float* probs, int32_t* topk_expert, float* topk_weight,
                                    float* topk_sum) {
  const int64_t n = GlobalThreadIndex();
  if (n >= N) return;
  math::RouterForwardRow(E, k, logits + n * E, probs + n * E, topk_expert + n * k,
                         topk_weight + n * k, topk_sum + n);
}

__global__ void RouterBackwardKernel(const float* probs, const int32_t* topk_expert,
                                     const float* topk_weight, const float* topk_sum,
                                     const float* dweight, const float* aux_dprob, int64_t N,
                                     int64_t E, int64_t k, float* dlogits) {
  const int64_t n = GlobalThreadIndex();
  if (n >= N) return;
  math::RouterBackwardRow(E, k, probs + n * E, topk_expert + n * k, topk_weight + n * k,
                          topk_sum[n], dweight + n * k, aux_dprob, dlogits + n * E);
}

namespace {
struct ProbInDouble {
  const float* probs;
  int64_t E;
  __device__ double operator()(int64_t n, int64_t e) const { return static_cast<double>(probs[n * E + e]); }
};
}  // namespace

cudaError_t LaunchRouterForward(const float* logits, int64_t N, int64_t E, int64_t k, float* probs,
                                int32_t* topk_expert, float* topk_weight, float* topk_sum,
                                cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  if (k < 1 || k > E) return cudaErrorInvalidValue;
  HM_LAUNCH(RouterForwardKernel, BlocksFor(N, kThreadsPerBlock), kThreadsPerBlock, 0, stream)(
      logits, N, E, k, probs, topk_expert, topk_weight, topk_sum);
  return cudaGetLastError();
}

cudaError_t LaunchRouterBackward(const float* probs, const int32_t* topk_expert,
                                 const float* topk_weight, const float* topk_sum,
                                 const float* dweight, const float* aux_dprob, int64_t N,
                                 int64_t E, int64_t k, float* dlogits, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  HM_LAUNCH(RouterBackwardKernel, BlocksFor(N, kThreadsPerBlock), kThreadsPerBlock, 0, stream)(
      probs, topk_expert, topk_weight, topk_sum, dweight, aux_dprob, N, E, k, dlogits);
  return cudaGetLastError();
}

int64_t RouterProbSumsWorkspace(int64_t N, int64_t E) { return ColumnSumsWorkspace(N, E); }

cudaError_t LaunchRouterProbSums(const float* probs, int64_t N, int64_t E, double* workspace, double* prob_sums,
                                 cudaStream_t stream) {
  return LaunchColumnSums(ProbInDouble{probs, E}, N, E, workspace, prob_sums, false, stream);
}

}  // namespace hetermoe::kernels
