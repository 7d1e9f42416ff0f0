// Column sums of an [N, C] matrix, out[j] (+)= sum_i value(i, j), in
// parallel over rows as well as columns: the reductions over tokens of the
// backward (the RMSNorm weight gradient, the router's probability sums) would
// otherwise be one serial chain of N additions per column.
//
// Each pass sums tiles of kColumnSumRows rows x 32 columns, one block per
// tile: 8 threads per column each add every 8th row of the tile (a chain of
// 32), then one adds the 8 partial sums; the pass leaves one row of partial
// sums per tile, and passes repeat over those until one row is left. So no
// thread adds more than 32 + 8 terms in a row, passes grow as log_256(N),
// and the order of the additions is fixed: the result is deterministic (no
// atomics), though not in the CPU's serial order (ulps apart).
//
// Header-only (templates); the value functor is a plain struct with a
// __device__ operator()(int64_t i, int64_t j) returning Acc.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common.cuh"

namespace hetermoe::kernels {

constexpr int64_t kColumnSumRows = 256;  // rows per tile
constexpr int kColumnSumThreadsY = 8;    // threads per column of a tile

// Tiles (rows of partial sums) one pass leaves from n rows.
inline int64_t ColumnSumTiles(int64_t n) { return (n + kColumnSumRows - 1) / kColumnSumRows; }

// Elements of Acc LaunchColumnSums needs as workspace for N rows and C columns
// (0 when N <= kColumnSumRows: one pass writes the result).
inline int64_t ColumnSumsWorkspace(int64_t N, int64_t C) {
  int64_t total = 0;
  for (int64_t p = ColumnSumTiles(N); p > 1; p = ColumnSumTiles(p)) total += p * C;
  return total;
}

// Reads row-major [rows, C] partial sums.
template <typename Acc>
struct ColumnSumRows {
  const Acc* data;
  int64_t C;
  __device__ Acc operator()(int64_t i, int64_t j) const { return data[i * C + j]; }
};

template <typename Acc, typename Value>
__global__ void __launch_bounds__(kWarpSize * kColumnSumThreadsY)
    ColumnTileSumsKernel(Value value, int64_t N, int64_t C, Acc* out, bool accumulate) {
  __shared__ Acc partial[kColumnSumThreadsY][kWarpSize + 1];
  const int tx = static_cast<int>(threadIdx.x), ty = static_cast<int>(threadIdx.y);
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kWarpSize + tx;
  const int64_t first = static_cast<int64_t>(blockIdx.y) * kColumnSumRows;
  const int64_t last = first + kColumnSumRows < N ? first + kColumnSumRows : N;
  Acc sum = 0;
  if (j < C)
    for (int64_t i = first + ty; i < last; i += kColumnSumThreadsY) sum += value(i, j);
  partial[ty][tx] = sum;
  __syncthreads();
  if (ty != 0 || j >= C) return;
  Acc total = 0;
  for (int y = 0; y < kColumnSumThreadsY; ++y) total += partial[y][tx];
  Acc* o = out + static_cast<int64_t>(blockIdx.y) * C + j;
  *o = accumulate ? *o + total : total;
}

// out[j] = sum_i value(i, j) (accumulate: out[j] += ...), j < C, i < N.
// `workspace`: ColumnSumsWorkspace(N, C) elements (may be null when that is
// 0). All on `stream`; N up to 65535 * 256 rows.
template <typename Acc, typename Value>
cudaError_t LaunchColumnSums(Value value, int64_t N, int64_t C, Acc* workspace, Acc* out, bool accumulate,
                             cudaStream_t stream) {
  if (C == 0) return cudaSuccess;
  if (N == 0) return accumulate ? cudaSuccess : cudaMemsetAsync(out, 0, sizeof(Acc) * C, stream);
  if (ColumnSumTiles(N) > 65535) return cudaErrorInvalidValue;
  const dim3 block(kWarpSize, kColumnSumThreadsY);
  const unsigned column_blocks = BlocksFor(C, kWarpSize);
  int64_t rows = ColumnSumTiles(N);
  Acc* level = rows == 1 ? out : workspace;
  // Through pointers: a template-id's comma would split the macro's arguments.
  // (Named <Kernel>_<what>, which the emulator's register model reads as
  // <Kernel>.)
  auto* const ColumnTileSumsKernel_Values = &ColumnTileSumsKernel<Acc, Value>;
  auto* const ColumnTileSumsKernel_Partials = &ColumnTileSumsKernel<Acc, ColumnSumRows<Acc>>;
  HM_LAUNCH(ColumnTileSumsKernel_Values, dim3(column_blocks, static_cast<unsigned>(rows)), block, 0, stream)(
      value, N, C, level, rows == 1 && accumulate);
  Acc* free_space = workspace + (rows == 1 ? 0 : rows * C);
  while (rows > 1) {
    const int64_t next = ColumnSumTiles(rows);
    Acc* dst = next == 1 ? out : free_space;
    HM_LAUNCH(ColumnTileSumsKernel_Partials, dim3(column_blocks, static_cast<unsigned>(next)), block, 0, stream)(
        ColumnSumRows<Acc>{level, C}, rows, C, dst, next == 1 && accumulate);
    if (next > 1) free_space += next * C;
    level = dst;
    rows = next;
  }
  return cudaGetLastError();
}

}  // namespace hetermoe::kernels
