#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "kernels/common.cuh"
#include "kernels/grouped_gemm.cuh"
#include "kernels/mma.cuh"

namespace hetermoe::kernels {
namespace {

constexpr int kTileRows = 64;   // i: output rows of a block
constexpr int kTileCols = 64;   // j: output columns of a block
constexpr int kTileDepth = 32;  // r: reduction step staged in shared memory
constexpr int kGemmThreads = 128;
constexpr int kPad = 8;  // 16-bit rows padded 16 bytes: a fragment load's 8 rows in different banks

// The product a block computes, for one expert: P[i, j] = sum_r A(i, r) B(r, j)
// over i < rows_i, j < cols_j, r < depth, with A(i, r) at a[i * a_si + r * a_sr],
// B(r, j) at b[r * b_sr + j * b_sj] and the result at c[i * ldc + j].
template <typename T>
struct Problem {
  const T* a;
  int64_t a_si, a_sr;
  const T* b;
  int64_t b_sr, b_sj;
  float* c;
  int64_t ldc;
  int64_t rows_i, cols_j, depth;
  int64_t i0, j0;  // this block's tile
  bool accumulate;
};

template <typename T>
__device__ __forceinline__ T Zero() {
  if constexpr (std::is_same_v<T, float>)
    return 0.0f;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __float2bfloat16_rn(0.0f);
  else
    return __float2half_rn(0.0f);
}

// The block's problem for expert-relative coordinates, or false when the
// block has no tile (past the last expert's rows, or an empty expert).
template <typename T>
__device__ bool FindProblem(const DeviceSizedGemm& g, Problem<T>& p) {
  const T* a = static_cast<const T*>(g.a);
  const T* b = static_cast<const T*>(g.b);
  const int64_t N = g.N, K = g.K;
  if (g.product == GroupedProduct::kBackwardWeight) {
    const int64_t e = blockIdx.z;
    const int64_t row0 = g.offsets[e], rows = g.offsets[e + 1] - row0;
    if (rows <= 0) return false;
    // G_e[N, K] += dy_e^T x_e: A(i, r) = dy[row0 + r][i], B(r, j) = x[row0 + r][j].
    p = {a + row0 * N, 1, N, b + row0 * K, K, 1, g.c + e * g.weight_stride, K, N, K, rows,
         static_cast<int64_t>(blockIdx.x) * kTileRows, static_cast<int64_t>(blockIdx.y) * kTileCols, true};
    return true;
  }
  // Which expert's row tile is block x: walk the experts' tile counts.
  int64_t tile = blockIdx.x, e = 0, row0 = 0, rows = 0;
  for (; e < g.experts; ++e) {
    row0 = g.offsets[e];
    rows = g.offsets[e + 1] - row0;
    const int64_t tiles = (rows + kTileRows - 1) / kTileRows;
    if (tile < tiles) break;
    tile -= tiles;
  }
  if (e == g.experts) return false;
  const T* w = b + e * g.weight_stride;
  if (g.product == GroupedProduct::kForward)  // c[r, N] = x[r, K] W^T: B(r, j) = W[j][r]
    p = {a + row0 * K, K, 1, w, 1, K, g.c + row0 * N, N, rows, N, K, 0, 0, g.accumulate};
  else  // c[r, K] = dy[r, N] W: B(r, j) = W[r][j]
    p = {a + row0 * N, N, 1, w, K, 1, g.c + row0 * K, K, rows, K, N, 0, 0, g.accumulate};
  p.i0 = tile * kTileRows;
  p.j0 = static_cast<int64_t>(blockIdx.y) * kTileCols;
  return true;
}

// Stages A's tile [64 i][32 r] as as[i * ld + r] and B's as bs[j * ld + r]
// (B transposed: a row per output column, the reduction contiguous),
// zero outside the problem. Consecutive threads walk the operand's
// contiguous index, so the global reads coalesce.
template <typename T>
__device__ __forceinline__ void StageTiles(const Problem<T>& p, int64_t r0, T* as, T* bs, int ld) {
  for (int idx = threadIdx.x; idx < kTileRows * kTileDepth; idx += kGemmThreads) {
    const int i = p.a_sr == 1 ? idx / kTileDepth : idx % kTileRows;
    const int r = p.a_sr == 1 ? idx % kTileDepth : idx / kTileRows;
    const int64_t gi = p.i0 + i, gr = r0 + r;
    as[i * ld + r] = gi < p.rows_i && gr < p.depth ? p.a[gi * p.a_si + gr * p.a_sr] : Zero<T>();
  }
  for (int idx = threadIdx.x; idx < kTileCols * kTileDepth; idx += kGemmThreads) {
    const int j = p.b_sr == 1 ? idx / kTileDepth : idx % kTileCols;
    const int r = p.b_sr == 1 ? idx % kTileDepth : idx / kTileCols;
    const int64_t gj = p.j0 + j, gr = r0 + r;
    bs[j * ld + r] = gj < p.cols_j && gr < p.depth ? p.b[gr * p.b_sr + gj * p.b_sj] : Zero<T>();
  }
}

template <typename T>
__device__ __forceinline__ void StoreResult(const Problem<T>& p, int64_t i, int64_t j, float v) {
  if (i >= p.rows_i || j >= p.cols_j) return;
  float& out = p.c[i * p.ldc + j];
  out = p.accumulate ? out + v : v;
}

// 16-bit inputs on tensor cores: warp w owns rows 32 (w / 2) .. + 32 and
// columns 32 (w % 2) .. + 32 of the tile, as 2 x 4 m16n8 accumulators.
template <typename T16>
__global__ void __launch_bounds__(kGemmThreads) DeviceSizedGemmMmaKernel(DeviceSizedGemm g) {
  Problem<T16> p;
  if (!FindProblem(g, p)) return;  // block-uniform
  HM_DYNAMIC_SHARED(float, smem);
  constexpr int ld = kTileDepth + kPad;
  T16* as = reinterpret_cast<T16*>(smem);
  T16* bs = as + kTileRows * ld;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int wi = 32 * (warp / 2), wj = 32 * (warp % 2);
  float acc[2][4][4] = {};
  for (int64_t r0 = 0; r0 < p.depth; r0 += kTileDepth) {
    __syncthreads();  // the previous step's tiles are consumed
    StageTiles(p, r0, as, bs, ld);
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < kTileDepth; ks += 16) {
      uint32_t af[2][4], bf[4][2];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) LoadA(as + (wi + 16 * mi) * ld + ks, ld, lane, af[mi]);
#pragma unroll
      for (int nj = 0; nj < 4; ++nj) LoadB(bs + (wj + 8 * nj) * ld + ks, ld, lane, bf[nj]);
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int nj = 0; nj < 4; ++nj) MmaM16N8K16<T16>(acc[mi][nj], af[mi], bf[nj]);
    }
  }
  // Accumulator element x of an m16n8 tile: row lane / 4 + 8 (x / 2), column 2 (lane % 4) + x % 2.
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int nj = 0; nj < 4; ++nj)
#pragma unroll
      for (int x = 0; x < 4; ++x)
        StoreResult(p, p.i0 + wi + 16 * mi + lane / 4 + 8 * (x / 2), p.j0 + wj + 8 * nj + 2 * (lane % 4) + x % 2,
                    acc[mi][nj][x]);
}

// fp32 inputs on the CUDA cores: thread t owns rows 8 (t / 16) .. + 8 and
// columns 4 (t % 16) .. + 4 of the tile; each output is one fused
// multiply-add per term, r in order.
__global__ void __launch_bounds__(kGemmThreads) DeviceSizedGemmFp32Kernel(DeviceSizedGemm g) {
  Problem<float> p;
  if (!FindProblem(g, p)) return;  // block-uniform
  HM_DYNAMIC_SHARED(float, smem);
  constexpr int ld = kTileDepth + 1;  // odd: a column walk over rows hits every bank
  float* as = smem;
  float* bs = as + kTileRows * ld;
  const int ti = 8 * (threadIdx.x / 16), tj = 4 * (threadIdx.x % 16);
  float acc[8][4] = {};
  for (int64_t r0 = 0; r0 < p.depth; r0 += kTileDepth) {
    __syncthreads();
    StageTiles(p, r0, as, bs, ld);
    __syncthreads();
    for (int r = 0; r < kTileDepth; ++r) {
      float av[8], bv[4];
#pragma unroll
      for (int x = 0; x < 8; ++x) av[x] = as[(ti + x) * ld + r];
#pragma unroll
      for (int y = 0; y < 4; ++y) bv[y] = bs[(tj + y) * ld + r];
#pragma unroll
      for (int x = 0; x < 8; ++x)
#pragma unroll
        for (int y = 0; y < 4; ++y) acc[x][y] = fmaf(av[x], bv[y], acc[x][y]);
    }
  }
#pragma unroll
  for (int x = 0; x < 8; ++x)
#pragma unroll
    for (int y = 0; y < 4; ++y) StoreResult(p, p.i0 + ti + x, p.j0 + tj + y, acc[x][y]);
}

}  // namespace

bool DeviceSizedGemmSupported(ComputeDtype inputs, int sm) { return inputs == ComputeDtype::kFp32 || sm >= 80; }

cudaError_t LaunchDeviceSizedGemm(const DeviceSizedGemm& g, cudaStream_t stream) {
  if (g.N < 0 || g.K < 0 || g.experts < 0 || g.max_rows < 0 || g.offsets == nullptr) return cudaErrorInvalidValue;
  if (g.experts > 1 && g.weight_stride < g.N * g.K) return cudaErrorInvalidValue;
  if (g.experts == 0 || g.N == 0 || g.K == 0) return cudaSuccess;
  dim3 grid;
  switch (g.product) {
    case GroupedProduct::kForward:
    case GroupedProduct::kBackwardInput: {
      const int64_t cols = g.product == GroupedProduct::kForward ? g.N : g.K;
      if (g.max_rows == 0) return cudaSuccess;
      grid = dim3(BlocksFor(g.max_rows, kTileRows) + static_cast<unsigned>(g.experts), BlocksFor(cols, kTileCols));
      break;
    }
    case GroupedProduct::kBackwardWeight:
      if (g.experts > 65535) return cudaErrorInvalidValue;
      grid = dim3(BlocksFor(g.N, kTileRows), BlocksFor(g.K, kTileCols), static_cast<unsigned>(g.experts));
      break;
  }
  if (g.inputs == ComputeDtype::kFp32) {
    const size_t shared = sizeof(float) * (kTileRows + kTileCols) * (kTileDepth + 1);
    HM_LAUNCH(DeviceSizedGemmFp32Kernel, grid, kGemmThreads, shared, stream)(g);
  } else {
    const size_t shared = 2 * (kTileRows + kTileCols) * (kTileDepth + kPad);
    if (g.inputs == ComputeDtype::kBf16)
      HM_LAUNCH(DeviceSizedGemmMmaKernel<__nv_bfloat16>, grid, kGemmThreads, shared, stream)(g);
    else
      HM_LAUNCH(DeviceSizedGemmMmaKernel<__half>, grid, kGemmThreads, shared, stream)(g);
  }
  return cudaGetLastError();
}

}  // namespace hetermoe::kernels
