// The MoE router on the GPU: softmax over E experts, top-k, renormalisation;
// its backward; and the per-expert probability sums the load-balancing loss
// needs. CPU twin: trainer/ops/router. The per-row code is the very same
// function on both sides (kernels/shared/router_row.h), one thread per token.
//
// Shapes: logits/probs/dlogits [N, E]; topk_expert/topk_weight/dweight [N, k];
// topk_sum [N]; aux_dprob [E] (or null); prob_sums [E] (double).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace hetermoe::kernels {

// --- kernels ---
__global__ void RouterForwardKernel(const float* logits, int64_t N, int64_t E, int64_t k,
                                    float* probs, int32_t* topk_expert, float* topk_weight,
                                    float* topk_sum);
__global__ void RouterBackwardKernel(const float* probs, const int32_t* topk_expert,
                                     const float* topk_weight, const float* topk_sum,
                                     const float* dweight, const float* aux_dprob, int64_t N,
                                     int64_t E, int64_t k, float* dlogits);

// --- launchers ---
cudaError_t LaunchRouterForward(const float* logits, int64_t N, int64_t E, int64_t k, float* probs,
                                int32_t* topk_expert, float* topk_weight, float* topk_sum,
                                cudaStream_t stream);
cudaError_t LaunchRouterBackward(const float* probs, const int32_t* topk_expert,
                                 const float* topk_weight, const float* topk_sum,
                                 const float* dweight, const float* aux_dprob, int64_t N,
                                 int64_t E, int64_t k, float* dlogits, cudaStream_t stream);
// prob_sums[e] = sum over rows n of probs[n, e], in double: a column sum in
// tiles (kernels/column_sums.cuh), with RouterProbSumsWorkspace(N, E) doubles
// of `workspace` (null when that is 0).
int64_t RouterProbSumsWorkspace(int64_t N, int64_t E);
cudaError_t LaunchRouterProbSums(const float* probs, int64_t N, int64_t E, double* workspace, double* prob_sums,
                                 cudaStream_t stream);

}  // namespace hetermoe::kernels
