#include <climits>

#include "kernels/common.cuh"
#include "kernels/dispatch.cuh"

namespace hetermoe::kernels {

constexpr int kPlanThreads = kDispatchPlanThreads;

__global__ void __launch_bounds__(kDispatchPlanThreads) BuildDispatchPlanKernel(const int32_t* topk_expert, int64_t A, int64_t k, int64_t E,
                                        int32_t* counts, int32_t* offsets, int32_t* row_of,
                                        int32_t* token_of_row) {
  __shared__ int32_t warp_totals[kPlanThreads / kWarpSize];
  __shared__ int32_t warp_base[kPlanThreads / kWarpSize];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  const unsigned lanes_below = (1u << lane) - 1u;  // lane 0: 0
  int32_t next_row = 0;  // rows handed out so far; identical in every thread
  for (int64_t e = 0; e < E; ++e) {
    if (threadIdx.x == 0) offsets[e] = next_row;
    const int32_t first = next_row;
    for (int64_t base = 0; base < A; base += blockDim.x) {
      const int64_t a = base + threadIdx.x;
      const bool match = a < A && topk_expert[a] == e;
      // Rank of this match among the chunk's matches, in increasing a:
      // matches in lower warps, then in lower lanes of this warp.
      const unsigned ballot = __ballot_sync(0xffffffffu, match);
      if (lane == 0) warp_totals[warp] = __popc(ballot);
      __syncthreads();
      if (threadIdx.x == 0) {
        int32_t running = 0;
        for (int w = 0; w < warps; ++w) {
          warp_base[w] = running;
          running += warp_totals[w];
        }
        warp_totals[0] = running;  // chunk total, read below after the barrier
      }
      __syncthreads();
      if (match) {
        const int32_t row = next_row + warp_base[warp] + __popc(ballot & lanes_below);
        row_of[a] = row;
        token_of_row[row] = static_cast<int32_t>(a / k);
      }
      next_row += warp_totals[0];
      __syncthreads();  // warp_totals / warp_base are rewritten by the next chunk
    }
    if (threadIdx.x == 0) counts[e] = next_row - first;
  }
  if (threadIdx.x == 0) offsets[E] = next_row;
}

__global__ void GatherRowsKernel(const float* x, const int32_t* token_of_row, int64_t A, int64_t d,
                                 float* xp) {
  const int64_t i = GlobalThreadIndex();
  if (i >= A * d) return;
  const int64_t r = i / d, j = i % d;
  xp[i] = x[static_cast<int64_t>(token_of_row[r]) * d + j];
}

__global__ void CombineKernel(const float* y, const float* topk_weight, const int32_t* row_of,
                              int64_t N, int64_t k, int64_t d, float* out) {
  const int64_t i = GlobalThreadIndex();
  if (i >= N * d) return;
  const int64_t n = i / d, j = i % d;
  float acc = out[i];
  for (int64_t s = 0; s < k; ++s)
    acc += topk_weight[n * k + s] * y[static_cast<int64_t>(row_of[n * k + s]) * d + j];
  out[i] = acc;
}

__global__ void CombineBackwardKernel(const float* y, const float* topk_weight,
                                      const int32_t* row_of, const float* dout, int64_t N,
                                      int64_t k, int64_t d, float* dy, float* dweight) {
  const int64_t a = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (a >= N * k) return;  // warp-uniform
  const int lane = threadIdx.x % kWarpSize;
  const int64_t n = a / k, row = row_of[a];
  const float w = topk_weight[a];
  const float* g = dout + n * d;
  const float* yr = y + row * d;
  float* dyr = dy + row * d;
  float partial = 0.0f;
  for (int64_t j = lane; j < d; j += kWarpSize) {
    dyr[j] = w * g[j];
    partial += g[j] * yr[j];
  }
  const float dot = WarpSum(partial);
  if (lane == 0) dweight[a] = dot;
}

__global__ void ScatterAddRowsKernel(const float* dxp, const int32_t* row_of, int64_t N, int64_t k,
                                     int64_t d, float* dx) {
  const int64_t i = GlobalThreadIndex();
  if (i >= N * d) return;
  const int64_t n = i / d, j = i % d;
  float acc = dx[i];
  for (int64_t s = 0; s < k; ++s) acc += dxp[static_cast<int64_t>(row_of[n * k + s]) * d + j];
  dx[i] = acc;
}

cudaError_t LaunchBuildDispatchPlan(const int32_t* topk_expert, int64_t N, int64_t k, int64_t E,
                                    int32_t* counts, int32_t* offsets, int32_t* row_of,
                                    int32_t* token_of_row, cudaStream_t stream) {
  const int64_t A = N * k;
  if (A >= INT_MAX) return cudaErrorInvalidValue;
  HM_LAUNCH(BuildDispatchPlanKernel, 1, kPlanThreads, 0, stream)(topk_expert, A, k, E, counts, offsets,
                                                          row_of, token_of_row);
  return cudaGetLastError();
}

cudaError_t LaunchGatherRows(const float* x, const int32_t* token_of_row, int64_t A, int64_t d,
                             float* xp, cudaStream_t stream) {
  if (A * d == 0) return cudaSuccess;
  HM_LAUNCH(GatherRowsKernel, BlocksFor(A * d, kThreadsPerBlock), kThreadsPerBlock, 0, stream)(
      x, token_of_row, A, d, xp);
  return cudaGetLastError();
}

cudaError_t LaunchCombine(const float* y, const float* topk_weight, const int32_t* row_of,
                          int64_t N, int64_t k, int64_t d, float* out, cudaStream_t stream) {
  if (N * d == 0) return cudaSuccess;
  HM_LAUNCH(CombineKernel, BlocksFor(N * d, kThreadsPerBlock), kThreadsPerBlock, 0, stream)(
      y, topk_weight, row_of, N, k, d, out);
  return cudaGetLastError();
}

cudaError_t LaunchCombineBackward(const float* y, const float* topk_weight, const int32_t* row_of,
                                  const float* dout, int64_t N, int64_t k, int64_t d, float* dy,
                                  float* dweight, cudaStream_t stream) {
  if (N * k == 0) return cudaSuccess;
  HM_LAUNCH(CombineBackwardKernel, BlocksFor(N * k, kWarpsPerBlock), kThreadsPerBlock, 0, stream)(
      y, topk_weight, row_of, dout, N, k, d, dy, dweight);
  return cudaGetLastError();
}

cudaError_t LaunchScatterAddRows(const float* dxp, const int32_t* row_of, int64_t N, int64_t k,
                                 int64_t d, float* dx, cudaStream_t stream) {
  if (N * d == 0) return cudaSuccess;
  HM_LAUNCH(ScatterAddRowsKernel, BlocksFor(N * d, kThreadsPerBlock), kThreadsPerBlock, 0, stream)(
      dxp, row_of, N, k, d, dx);
  return cudaGetLastError();
}

}  // namespace hetermoe::kernels
