#include <climits>

#include "kernels/common.cuh"
#include "kernels/dispatch.cuh"

namespace hetermoe::kernels {

constexpr int kPlanThreads = kDispatchPlanThreads;  // assignments per tile, one per thread

namespace {
// The block's count of threads with `match`, and how many threads before
// this one have it (ballots per warp, the warps' totals through shared
// memory). Every thread of the block must call it.
struct TileRank {
  int32_t below, total;
};
__device__ TileRank RankInTile(bool match, int32_t* warp_totals) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  const unsigned ballot = __ballot_sync(0xffffffffu, match);
  __syncthreads();  // warp_totals may still be read by the previous call
  if (lane == 0) warp_totals[warp] = __popc(ballot);
  __syncthreads();
  TileRank r{__popc(ballot & ((1u << lane) - 1u)), 0};
  for (int w = 0; w < warps; ++w) {  // at most 32: bounded by the block, not by A
    if (w < warp) r.below += warp_totals[w];
    r.total += warp_totals[w];
  }
  return r;
}
}  // namespace

// Per tile of 1024 assignments, how many go to each expert.
__global__ void __launch_bounds__(kDispatchPlanThreads)
    DispatchTileCountsKernel(const int32_t* topk_expert, int64_t A, int64_t E, int32_t* tile_counts) {
  __shared__ int32_t warp_totals[kPlanThreads / kWarpSize];
  const int64_t a = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int32_t mine = a < A ? topk_expert[a] : -1;
  for (int64_t e = 0; e < E; ++e) {
    const TileRank r = RankInTile(mine == e, warp_totals);
    if (threadIdx.x == 0) tile_counts[blockIdx.x * E + e] = r.total;
  }
}

// One block per expert: the exclusive prefix of its tile counts over the
// tiles (1024 tiles per round, a warp scan by shuffles plus the warps'
// totals), and its total.
__global__ void __launch_bounds__(kDispatchPlanThreads)
    DispatchExpertScanKernel(const int32_t* tile_counts, int64_t tiles, int64_t E, int32_t* tile_base,
                             int32_t* totals) {
  __shared__ int32_t warp_sums[kPlanThreads / kWarpSize];
  const int64_t e = blockIdx.x;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  int32_t carry = 0;  // tiles before this round; the same in every thread
  for (int64_t first = 0; first < tiles; first += blockDim.x) {
    const int64_t t = first + threadIdx.x;
    const int32_t v = t < tiles ? tile_counts[t * E + e] : 0;
    int32_t inclusive = v;
    for (int offset = 1; offset < kWarpSize; offset *= 2) {
      const int32_t up = __shfl_sync(0xffffffffu, inclusive, lane >= offset ? lane - offset : lane);
      if (lane >= offset) inclusive += up;
    }
    __syncthreads();  // warp_sums may still be read by the previous round
    if (lane == kWarpSize - 1) warp_sums[warp] = inclusive;
    __syncthreads();
    int32_t before = 0, round = 0;
    for (int w = 0; w < warps; ++w) {
      if (w < warp) before += warp_sums[w];
      round += warp_sums[w];
    }
    if (t < tiles) tile_base[t * E + e] = carry + before + inclusive - v;
    carry += round;
  }
  if (threadIdx.x == 0) totals[e] = carry;
}

// counts and offsets from the experts' totals (E steps: bounded by the
// experts, not by the tokens).
__global__ void DispatchOffsetsKernel(const int32_t* totals, int64_t E, int32_t* counts, int32_t* offsets) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  int32_t at = 0;
  for (int64_t e = 0; e < E; ++e) {
    counts[e] = totals[e];
    offsets[e] = at;
    at += totals[e];
  }
  offsets[E] = at;
}

// Each assignment's row: its expert's offset, the rows of its expert in
// earlier tiles, and its rank among this tile's (a stable counting sort).
__global__ void __launch_bounds__(kDispatchPlanThreads)
    DispatchTileRowsKernel(const int32_t* topk_expert, int64_t A, int64_t k, int64_t E, const int32_t* offsets,
                           const int32_t* tile_base, int32_t* row_of, int32_t* token_of_row) {
  __shared__ int32_t warp_totals[kPlanThreads / kWarpSize];
  const int64_t a = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int32_t mine = a < A ? topk_expert[a] : -1;
  for (int64_t e = 0; e < E; ++e) {
    const TileRank r = RankInTile(mine == e, warp_totals);
    if (mine == e) {
      const int32_t row = offsets[e] + tile_base[blockIdx.x * E + e] + r.below;
      row_of[a] = row;
      token_of_row[row] = static_cast<int32_t>(a / k);
    }
  }
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

int64_t DispatchPlanWorkspace(int64_t N, int64_t k, int64_t E) {
  const int64_t tiles = (N * k + kPlanThreads - 1) / kPlanThreads;
  return (2 * tiles + 1) * E;
}

cudaError_t LaunchBuildDispatchPlan(const int32_t* topk_expert, int64_t N, int64_t k, int64_t E,
                                    int32_t* counts, int32_t* offsets, int32_t* row_of,
                                    int32_t* token_of_row, int32_t* workspace, cudaStream_t stream) {
  const int64_t A = N * k;
  if (A >= INT_MAX) return cudaErrorInvalidValue;
  const int64_t tiles = (A + kPlanThreads - 1) / kPlanThreads;
  int32_t* tile_counts = workspace;
  int32_t* tile_base = workspace + tiles * E;
  int32_t* totals = workspace + 2 * tiles * E;
  if (tiles > 0) {
    HM_LAUNCH(DispatchTileCountsKernel, static_cast<unsigned>(tiles), kPlanThreads, 0, stream)(topk_expert, A, E,
                                                                                               tile_counts);
    if (E > 0)
      HM_LAUNCH(DispatchExpertScanKernel, static_cast<unsigned>(E), kPlanThreads, 0, stream)(tile_counts, tiles, E,
                                                                                             tile_base, totals);
  } else if (E > 0) {
    if (cudaError_t err = cudaMemsetAsync(totals, 0, sizeof(int32_t) * E, stream); err != cudaSuccess) return err;
  }
  HM_LAUNCH(DispatchOffsetsKernel, 1, kWarpSize, 0, stream)(totals, E, counts, offsets);
  if (tiles > 0)
    HM_LAUNCH(DispatchTileRowsKernel, static_cast<unsigned>(tiles), kPlanThreads, 0, stream)(
        topk_expert, A, k, E, offsets, tile_base, row_of, token_of_row);
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
