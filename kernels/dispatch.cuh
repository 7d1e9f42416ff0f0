// Token dispatch and combine on the GPU: the permutation of (token, slot)
// assignments into expert-contiguous rows and back. CPU twin:
// trainer/ops/experts (MakeDispatchPlan, DispatchGather, Combine,
// CombineBackward, DispatchScatterAdd), with the same contracts:
//
//   N tokens, k slots, E experts, A = N * k assignments a = n * k + slot.
//   plan  : counts[E], offsets[E+1] (prefix sums), row_of[A] (permuted row
//           of assignment a), token_of_row[A]. Rows of expert e are
//           [offsets[e], offsets[e+1]) in increasing a, i.e. token order:
//           a stable counting sort, identical to the CPU's plan.
//   gather: xp[r] = x[token_of_row[r]]                      [A, d]
//   combine: out[n] += sum_slot w[n, slot] * y[row_of[n, slot]]  [N, d]
//   combine backward: dy[row_of[a]] = w[a] * dout[n]; dweight[a] = dout[n] . y[row_of[a]]
//   scatter-add: dx[n] += sum_slot dxp[row_of[n, slot]]
//
// The plan uses int32 indices on the device (A < 2^31, checked). Combine and
// scatter-add are one thread per output element summing its k slots in
// order, so no atomics are needed and the sum order is the CPU's.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace hetermoe::kernels {

// --- kernels ---
// The plan in tiles of kDispatchPlanThreads assignments (one per thread):
// each tile counts its assignments per expert (warp ballots), one block per
// expert scans its tile counts, the offsets follow from the totals, and each
// tile places its assignments at offset + earlier tiles' rows + rank in the
// tile: a stable counting sort, parallel over tiles, no thread's serial
// chain longer than a tile or the expert count.
constexpr int kDispatchPlanThreads = 1024;
__global__ void __launch_bounds__(kDispatchPlanThreads)
    DispatchTileCountsKernel(const int32_t* topk_expert, int64_t A, int64_t E, int32_t* tile_counts);
__global__ void __launch_bounds__(kDispatchPlanThreads)
    DispatchExpertScanKernel(const int32_t* tile_counts, int64_t tiles, int64_t E, int32_t* tile_base,
                             int32_t* totals);
__global__ void DispatchOffsetsKernel(const int32_t* totals, int64_t E, int32_t* counts, int32_t* offsets);
__global__ void __launch_bounds__(kDispatchPlanThreads)
    DispatchTileRowsKernel(const int32_t* topk_expert, int64_t A, int64_t k, int64_t E, const int32_t* offsets,
                           const int32_t* tile_base, int32_t* row_of, int32_t* token_of_row);
__global__ void GatherRowsKernel(const float* x, const int32_t* token_of_row, int64_t A, int64_t d,
                                 float* xp);
__global__ void CombineKernel(const float* y, const float* topk_weight, const int32_t* row_of,
                              int64_t N, int64_t k, int64_t d, float* out);
// One warp per assignment.
__global__ void CombineBackwardKernel(const float* y, const float* topk_weight,
                                      const int32_t* row_of, const float* dout, int64_t N,
                                      int64_t k, int64_t d, float* dy, float* dweight);
__global__ void ScatterAddRowsKernel(const float* dxp, const int32_t* row_of, int64_t N, int64_t k,
                                     int64_t d, float* dx);

// --- launchers ---
// `workspace`: DispatchPlanWorkspace(N, k, E) int32s.
int64_t DispatchPlanWorkspace(int64_t N, int64_t k, int64_t E);
cudaError_t LaunchBuildDispatchPlan(const int32_t* topk_expert, int64_t N, int64_t k, int64_t E,
                                    int32_t* counts, int32_t* offsets, int32_t* row_of,
                                    int32_t* token_of_row, int32_t* workspace, cudaStream_t stream);
cudaError_t LaunchGatherRows(const float* x, const int32_t* token_of_row, int64_t A, int64_t d,
                             float* xp, cudaStream_t stream);
cudaError_t LaunchCombine(const float* y, const float* topk_weight, const int32_t* row_of,
                          int64_t N, int64_t k, int64_t d, float* out, cudaStream_t stream);
cudaError_t LaunchCombineBackward(const float* y, const float* topk_weight, const int32_t* row_of,
                                  const float* dout, int64_t N, int64_t k, int64_t d, float* dy,
                                  float* dweight, cudaStream_t stream);
cudaError_t LaunchScatterAddRows(const float* dxp, const int32_t* row_of, int64_t N, int64_t k,
                                 int64_t d, float* dx, cudaStream_t stream);

}  // namespace hetermoe::kernels
