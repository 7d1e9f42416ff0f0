#include <algorithm>
#include <cmath>

#include "kernels/common.cuh"
#include "kernels/flash_attention.cuh"
#include "kernels/mma.cuh"
#include "kernels/shared/math.h"

namespace hetermoe::kernels {
namespace {

constexpr int kFlashThreads = kFlashWarps * kWarpSize;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
// Shared-memory rows are padded by 8 elements (16 bytes) so that the eight
// rows a fragment load touches fall in different banks.
constexpr int kPad = 8;

// The kernels' compile-time shape: 16-bit type and the largest head dim
// (register arrays are sized for it; a smaller multiple of 16 runs with the
// loops cut short).
template <typename T16, int kMaxHd>
struct Flash {
  using T = T16;
  static constexpr int kSteps = kMaxHd / 16;  // k-steps over the head dim
  static constexpr int kTiles = kMaxHd / 8;   // 8-column tiles of the head dim
};

template <typename T16>
__device__ __forceinline__ T16 To16(float x) {
  if constexpr (std::is_same_v<T16, __nv_bfloat16>)
    return __float2bfloat16_rn(x);
  else
    return __float2half_rn(x);
}

// Rows [row0, row0 + rows) of head `head` (of `heads`) of a [B*T, heads*hd]
// fp32 matrix for sequence b, rounded to 16 bits, into dst[r * ld + c]
// (transposed: dst[c * ld + r]); rows past the sequence are zero. Block-wide;
// the caller synchronises around it.
template <typename T16, bool kTransposed>
__device__ __forceinline__ void Stage(const float* m, int64_t b, int64_t row0, int rows, int64_t head,
                                      int64_t heads, const AttentionDims& s, T16* dst, int ld) {
  const int hd = static_cast<int>(s.head_dim);
  for (int idx = threadIdx.x; idx < rows * hd; idx += blockDim.x) {
    const int r = idx / hd, c = idx % hd;
    const int64_t t = row0 + r;
    const float x = t < s.seq_len ? m[((b * s.seq_len + t) * heads + head) * hd + c] : 0.0f;
    dst[kTransposed ? c * ld + r : r * ld + c] = To16<T16>(x);
  }
}

// Sum / max over the 4 lanes of a quad (the lanes holding one row of C).
__device__ __forceinline__ float QuadSum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float QuadMax(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

// The row (0..15) and column (0..7) of accumulator element i of this lane.
__device__ __forceinline__ int AccRow(int lane, int i) { return lane / 4 + 8 * (i / 2); }
__device__ __forceinline__ int AccCol(int lane, int i) { return 2 * (lane % 4) + i % 2; }

// Rows [row0, row0 + 64) of head `head` of a [B*T, heads*hd] matrix, staged
// through `scratch` ([64][ld]): this warp's 16 of them as A fragments (hd/16
// k-steps). Block-wide; the block is synchronised before it returns, so the
// caller may reuse `scratch` at once.
template <typename F>
__device__ __forceinline__ void LoadWarpRows(const float* m, int64_t b, int64_t row0, int64_t head, int64_t heads,
                                             const AttentionDims& s, typename F::T* scratch, int ld,
                                             uint32_t (&a)[F::kSteps][4]) {
  Stage<typename F::T, false>(m, b, row0, kFlashRows, head, heads, s, scratch, ld);
  __syncthreads();
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int i = 0; i < F::kSteps; ++i)
    if (i < s.head_dim / 16) LoadA(scratch + 16 * warp * ld + 16 * i, ld, lane, a[i]);
  __syncthreads();
}

// acc = A R^T: A is this warp's 16 rows as fragments (head_dim / 16 k-steps),
// R the kCols rows of `rows` (head dim contiguous, rows ld apart): the warp's
// scores against a tile of partners.
template <typename F, int kCols>
__device__ __forceinline__ void ProductWithRows(float (&acc)[kCols / 8][4], const uint32_t (&a)[F::kSteps][4],
                                                const typename F::T* rows, int ld, int head_dim) {
  const int lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int n = 0; n < kCols / 8; ++n) {
    acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
    for (int i = 0; i < F::kSteps; ++i) {
      if (i >= head_dim / 16) break;
      uint32_t bf[2];
      LoadB(rows + 8 * n * ld + 16 * i, ld, lane, bf);
      MmaM16N8K16<typename F::T>(acc[n], a[i], bf);
    }
  }
}

// acc[n] += A times the n-th 16 x 8 tile of B over the head dim, where B's
// column c is row c of `bt` (k contiguous, rows ld apart).
template <typename F>
__device__ __forceinline__ void MmaOverHeadDim(float (&acc)[F::kTiles][4], const uint32_t (&a)[4],
                                               const typename F::T* bt, int ld, int head_dim) {
  const int lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int n = 0; n < F::kTiles; ++n) {
    if (n >= head_dim / 8) break;
    uint32_t bf[2];
    LoadB(bt + 8 * n * ld, ld, lane, bf);
    MmaM16N8K16<typename F::T>(acc[n], a, bf);
  }
}

// Writes this warp's rows (row0 + 0..15, those < T) of the accumulators
// times row_scale[0 or 1] (rows g and g + 8) to out[row_index(row) + column].
template <typename F, typename RowIndex>
__device__ __forceinline__ void StoreRows(const float (&acc)[F::kTiles][4], const float (&row_scale)[2], int64_t row0,
                                          int64_t T, int head_dim, RowIndex row_index, float* out) {
  const int lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int n = 0; n < F::kTiles; ++n) {
    if (n >= head_dim / 8) break;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = row0 + AccRow(lane, i);
      if (row < T) out[row_index(row) + 8 * n + AccCol(lane, i)] = acc[n][i] * row_scale[i / 2];
    }
  }
}

}  // namespace

// grid (B * H, ceil(T / 64)), 128 threads; shared: K tile [64][hd + 8] and
// V^T tile [hd][64 + 8] of T16 (the K area first holds the block's queries).
template <typename F>
__global__ void __launch_bounds__(kFlashThreads)
    FlashAttentionForwardKernel(AttentionDims s, const float* q, const float* k, const float* v, float* out,
                                float* lse) {
  using T16 = typename F::T;
  HM_DYNAMIC_SHARED(float, smem);
  const int hd = static_cast<int>(s.head_dim), ld = hd + kPad, ldv = kFlashForwardKeys + kPad;
  T16* ks = reinterpret_cast<T16*>(smem);  // [64][ld], first the queries
  T16* vts = ks + kFlashRows * ld;          // [hd][ldv]
  const int64_t T = s.seq_len, H = s.heads, KV = s.kv_heads;
  const int64_t b = blockIdx.x / H, h = blockIdx.x % H, kvh = h / (H / KV);
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t q0 = static_cast<int64_t>(blockIdx.y) * kFlashRows;
  const int64_t w0 = q0 + 16 * warp;  // this warp's first query
  const float scale_log2 = kLog2e / sqrtf(static_cast<float>(hd));

  uint32_t qa[F::kSteps][4];
  LoadWarpRows<F>(q, b, q0, h, H, s, ks, ld, qa);

  float o[F::kTiles][4];
#pragma unroll
  for (int n = 0; n < F::kTiles; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  // Per lane, for its rows g and g + 8: running max (log2 units of the
  // scaled score) and this lane's part of the running sum.
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  const int64_t last_key = min(T - 1, q0 + kFlashRows - 1);
  for (int64_t k0 = AttentionFirstKey(q0, s.window); k0 <= last_key; k0 += kFlashForwardKeys) {
    __syncthreads();  // the previous tile (or the queries) is consumed
    Stage<T16, false>(k, b, k0, kFlashForwardKeys, kvh, KV, s, ks, ld);
    Stage<T16, true>(v, b, k0, kFlashForwardKeys, kvh, KV, s, vts, ldv);
    __syncthreads();
    // Warp-uniform: does any of the warp's queries see a key of this tile?
    const int64_t w_last = min(T - 1, w0 + 15);
    if (w0 >= T || k0 > w_last || k0 + kFlashForwardKeys - 1 < AttentionFirstKey(w0, s.window)) continue;

    float acc[kFlashForwardKeys / 8][4];
    ProductWithRows<F, kFlashForwardKeys>(acc, qa, ks, ld, hd);  // S = Q K^T
    // Scale, mask, and the tile's row maxima.
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kFlashForwardKeys / 8; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t t = w0 + AccRow(lane, i), j = k0 + 8 * n + AccCol(lane, i);
        const bool visible = t < T && j < T && AttentionVisible(t, j, s.window);
        acc[n][i] = visible ? acc[n][i] * scale_log2 : -INFINITY;
        tile_max[i / 2] = fmaxf(tile_max[i / 2], acc[n][i]);
      }
    float alpha[2], base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float m_new = fmaxf(m[r], QuadMax(tile_max[r]));
      base[r] = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing visible yet
      alpha[r] = exp2f(m[r] - base[r]);             // 0 while m = -inf
      m[r] = m_new;
      l[r] *= alpha[r];
    }
#pragma unroll
    for (int n = 0; n < kFlashForwardKeys / 8; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        acc[n][i] = exp2f(acc[n][i] - base[i / 2]);  // masked: exp2(-inf) = 0
        l[i / 2] += acc[n][i];
      }
#pragma unroll
    for (int n = 0; n < F::kTiles; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) o[n][i] *= alpha[i / 2];
    // O += P V, P straight from the accumulators.
#pragma unroll
    for (int kk = 0; kk < kFlashForwardKeys / 16; ++kk) {
      uint32_t pa[4];
      AccumulatorsToA<T16>(acc[2 * kk], acc[2 * kk + 1], pa);
      MmaOverHeadDim<F>(o, pa, vts + 16 * kk, ldv, hd);
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) l[r] = QuadSum(l[r]);
  // Every row < T sees its own key, so l >= 1 there.
  const float inv_l[2] = {1.0f / l[0], 1.0f / l[1]};
  StoreRows<F>(o, inv_l, w0, T, hd, [&](int64_t t) { return ((b * T + t) * H + h) * hd; }, out);
  if (lane % 4 == 0)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t t = w0 + lane / 4 + 8 * r;
      if (t < T) lse[(b * H + h) * T + t] = m[r] * kLn2 + logf(l[r]);
    }
}

// grid (B * H, ceil(T / 64)), 128 threads; shared: K and V tiles [32][hd + 8]
// and K^T [hd][32 + 8] of T16 (K and V first hold the block's queries, then
// their output gradients).
template <typename F>
__global__ void __launch_bounds__(kFlashThreads)
    FlashAttentionBackwardQueryKernel(AttentionDims s, const float* q, const float* k, const float* v,
                                      const float* dout, const float* lse, const float* D, float* dq) {
  using T16 = typename F::T;
  constexpr int kKeys = kFlashBackwardTile;
  HM_DYNAMIC_SHARED(float, smem);
  const int hd = static_cast<int>(s.head_dim), ld = hd + kPad, ldt = kKeys + kPad;
  T16* ks = reinterpret_cast<T16*>(smem);  // [32][ld]
  T16* vs = ks + kKeys * ld;                // [32][ld]
  T16* kts = vs + kKeys * ld;               // [hd][ldt]
  const int64_t T = s.seq_len, H = s.heads, KV = s.kv_heads;
  const int64_t b = blockIdx.x / H, h = blockIdx.x % H, kvh = h / (H / KV);
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t q0 = static_cast<int64_t>(blockIdx.y) * kFlashRows;
  const int64_t w0 = q0 + 16 * warp;
  const float scale = 1.0f / sqrtf(static_cast<float>(hd)), scale_log2 = scale * kLog2e;

  // The warp's queries and output gradients as A fragments (staged in turn
  // through the K/V area, 64 rows of ld).
  uint32_t qa[F::kSteps][4], da[F::kSteps][4];
  LoadWarpRows<F>(q, b, q0, h, H, s, ks, ld, qa);
  LoadWarpRows<F>(dout, b, q0, h, H, s, ks, ld, da);
  float row_lse[2], row_D[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t t = w0 + lane / 4 + 8 * r;
    row_lse[r] = t < T ? lse[(b * H + h) * T + t] * kLog2e : 0.0f;
    row_D[r] = t < T ? D[(b * H + h) * T + t] : 0.0f;
  }
  float dqa[F::kTiles][4];
#pragma unroll
  for (int n = 0; n < F::kTiles; ++n) dqa[n][0] = dqa[n][1] = dqa[n][2] = dqa[n][3] = 0.0f;

  const int64_t last_key = min(T - 1, q0 + kFlashRows - 1);
  for (int64_t k0 = AttentionFirstKey(q0, s.window); k0 <= last_key; k0 += kKeys) {
    __syncthreads();
    Stage<T16, false>(k, b, k0, kKeys, kvh, KV, s, ks, ld);
    Stage<T16, false>(v, b, k0, kKeys, kvh, KV, s, vs, ld);
    Stage<T16, true>(k, b, k0, kKeys, kvh, KV, s, kts, ldt);
    __syncthreads();
    const int64_t w_last = min(T - 1, w0 + 15);
    if (w0 >= T || k0 > w_last || k0 + kKeys - 1 < AttentionFirstKey(w0, s.window)) continue;

    float p[kKeys / 8][4], dp[kKeys / 8][4];
    ProductWithRows<F, kKeys>(p, qa, ks, ld, hd);   // S
    ProductWithRows<F, kKeys>(dp, da, vs, ld, hd);  // dP = dO V^T
    // p = exp(S scale - lse); dS = p (dP - D) scale, in p's registers.
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t t = w0 + AccRow(lane, i), j = k0 + 8 * n + AccCol(lane, i);
        const bool visible = t < T && j < T && AttentionVisible(t, j, s.window);
        const float prob = visible ? exp2f(p[n][i] * scale_log2 - row_lse[i / 2]) : 0.0f;
        p[n][i] = math::AttentionScoreGrad(prob, dp[n][i], row_D[i / 2], scale);
      }
    // dQ += dS K
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      uint32_t dsa[4];
      AccumulatorsToA<T16>(p[2 * kk], p[2 * kk + 1], dsa);
      MmaOverHeadDim<F>(dqa, dsa, kts + 16 * kk, ldt, hd);
    }
  }
  const float one[2] = {1.0f, 1.0f};
  StoreRows<F>(dqa, one, w0, T, hd, [&](int64_t t) { return ((b * T + t) * H + h) * hd; }, dq);
}

// grid (B * KV, ceil(T / 64)), 128 threads; shared: Q and dO tiles [32][hd + 8],
// Q^T and dO^T [hd][32 + 8] of T16, and the tile's lse and D (floats). The Q
// and dO area first holds the block's keys, then its values.
template <typename F>
__global__ void __launch_bounds__(kFlashThreads)
    FlashAttentionBackwardKeyValueKernel(AttentionDims s, const float* q, const float* k, const float* v,
                                         const float* dout, const float* lse, const float* D, float* dk,
                                         float* dv) {
  using T16 = typename F::T;
  constexpr int kQueries = kFlashBackwardTile;
  HM_DYNAMIC_SHARED(float, smem);
  const int hd = static_cast<int>(s.head_dim), ld = hd + kPad, ldt = kQueries + kPad;
  float* lses = smem;               // [32], log2 units
  float* Ds = smem + kQueries;      // [32]
  T16* qs = reinterpret_cast<T16*>(smem + 2 * kQueries);  // [32][ld]
  T16* dos = qs + kQueries * ld;                           // [32][ld]
  T16* qts = dos + kQueries * ld;                          // [hd][ldt]
  T16* dots = qts + hd * ldt;                              // [hd][ldt]
  const int64_t T = s.seq_len, H = s.heads, KV = s.kv_heads, group = H / KV;
  const int64_t b = blockIdx.x / KV, kvh = blockIdx.x % KV;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * kFlashRows;  // the block's first key
  const int64_t w0 = j0 + 16 * warp;                                  // the warp's first key
  const float scale = 1.0f / sqrtf(static_cast<float>(hd)), scale_log2 = scale * kLog2e;

  uint32_t ka[F::kSteps][4], va[F::kSteps][4];
  LoadWarpRows<F>(k, b, j0, kvh, KV, s, qs, ld, ka);
  LoadWarpRows<F>(v, b, j0, kvh, KV, s, qs, ld, va);
  float dka[F::kTiles][4], dva[F::kTiles][4];
#pragma unroll
  for (int n = 0; n < F::kTiles; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) dka[n][i] = dva[n][i] = 0.0f;

  // Queries that see a key of the block: j0 <= t < j0 + 64 - 1 + window.
  const int64_t end_query = s.window > 0 ? min(T, j0 + kFlashRows - 1 + s.window) : T;
  for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
    for (int64_t t0 = j0; t0 < end_query; t0 += kQueries) {
      __syncthreads();
      Stage<T16, false>(q, b, t0, kQueries, h, H, s, qs, ld);
      Stage<T16, false>(dout, b, t0, kQueries, h, H, s, dos, ld);
      Stage<T16, true>(q, b, t0, kQueries, h, H, s, qts, ldt);
      Stage<T16, true>(dout, b, t0, kQueries, h, H, s, dots, ldt);
      for (int r = threadIdx.x; r < kQueries; r += blockDim.x) {
        const int64_t t = t0 + r;
        lses[r] = t < T ? lse[(b * H + h) * T + t] * kLog2e : 0.0f;
        Ds[r] = t < T ? D[(b * H + h) * T + t] : 0.0f;
      }
      __syncthreads();
      // Warp-uniform: does a query of the tile see one of the warp's keys?
      const int64_t t_last = min(T - 1, t0 + kQueries - 1);
      if (w0 >= T || t_last < w0 || (s.window > 0 && t0 - (w0 + 15) >= s.window)) continue;

      float p[kQueries / 8][4], dp[kQueries / 8][4];  // S^T and dP^T: rows = keys
      ProductWithRows<F, kQueries>(p, ka, qs, ld, hd);
      ProductWithRows<F, kQueries>(dp, va, dos, ld, hd);
      float ds[kQueries / 8][4];
#pragma unroll
      for (int n = 0; n < kQueries / 8; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int col = 8 * n + AccCol(lane, i);
          const int64_t j = w0 + AccRow(lane, i), t = t0 + col;
          const bool visible = t < T && j < T && AttentionVisible(t, j, s.window);
          p[n][i] = visible ? exp2f(p[n][i] * scale_log2 - lses[col]) : 0.0f;
          ds[n][i] = math::AttentionScoreGrad(p[n][i], dp[n][i], Ds[col], scale);
        }
      // dV += P^T dO, dK += dS^T Q
#pragma unroll
      for (int kk = 0; kk < kQueries / 16; ++kk) {
        uint32_t pa[4], dsa[4];
        AccumulatorsToA<T16>(p[2 * kk], p[2 * kk + 1], pa);
        AccumulatorsToA<T16>(ds[2 * kk], ds[2 * kk + 1], dsa);
        MmaOverHeadDim<F>(dva, pa, dots + 16 * kk, ldt, hd);
        MmaOverHeadDim<F>(dka, dsa, qts + 16 * kk, ldt, hd);
      }
    }
  }
  const float one[2] = {1.0f, 1.0f};
  auto row_index = [&](int64_t j) { return ((b * T + j) * KV + kvh) * hd; };
  StoreRows<F>(dka, one, w0, T, hd, row_index, dk);
  StoreRows<F>(dva, one, w0, T, hd, row_index, dv);
}

namespace {

// Dynamic shared bytes of each kernel (see the kernels' comments).
size_t ForwardShared(int hd) {
  return 2 * (kFlashRows * (hd + kPad) + hd * (kFlashForwardKeys + kPad));
}
size_t BackwardQueryShared(int hd) {
  return 2 * std::max(kFlashRows * (hd + kPad), 2 * kFlashBackwardTile * (hd + kPad)) +
         2 * hd * (kFlashBackwardTile + kPad);
}
size_t BackwardKeyValueShared(int hd) {
  const size_t tiles = 2 * kFlashBackwardTile * (hd + kPad) + 2 * hd * (kFlashBackwardTile + kPad);
  return sizeof(float) * 2 * kFlashBackwardTile + 2 * std::max<size_t>(kFlashRows * (hd + kPad), tiles);
}

template <typename F>
void LaunchForward(const AttentionDims& s, const float* q, const float* k, const float* v, float* out, float* lse,
                   cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(s.batch * s.heads), BlocksFor(s.seq_len, kFlashRows));
  HM_LAUNCH(FlashAttentionForwardKernel<F>, grid, kFlashThreads, ForwardShared(static_cast<int>(s.head_dim)),
            stream)(s, q, k, v, out, lse);
}

template <typename F>
void LaunchBackward(const AttentionDims& s, const float* q, const float* k, const float* v, const float* dout,
                    const float* lse, const float* D, float* dq, float* dk, float* dv, cudaStream_t stream) {
  const int hd = static_cast<int>(s.head_dim);
  const unsigned row_blocks = BlocksFor(s.seq_len, kFlashRows);
  HM_LAUNCH(FlashAttentionBackwardQueryKernel<F>, dim3(static_cast<unsigned>(s.batch * s.heads), row_blocks),
            kFlashThreads, BackwardQueryShared(hd), stream)(s, q, k, v, dout, lse, D, dq);
  HM_LAUNCH(FlashAttentionBackwardKeyValueKernel<F>, dim3(static_cast<unsigned>(s.batch * s.kv_heads), row_blocks),
            kFlashThreads, BackwardKeyValueShared(hd), stream)(s, q, k, v, dout, lse, D, dk, dv);
}

// Runs `launch` with the instantiation for the dtype and head dim.
template <template <typename> class Launch, typename... Args>
void Dispatch(ComputeDtype dtype, int64_t hd, Args&&... args) {
  if (dtype == ComputeDtype::kBf16) {
    if (hd <= 64)
      Launch<Flash<__nv_bfloat16, 64>>::Run(args...);
    else
      Launch<Flash<__nv_bfloat16, 128>>::Run(args...);
  } else {
    if (hd <= 64)
      Launch<Flash<__half, 64>>::Run(args...);
    else
      Launch<Flash<__half, 128>>::Run(args...);
  }
}
template <typename F>
struct ForwardLauncher {
  template <typename... Args>
  static void Run(Args... args) {
    LaunchForward<F>(args...);
  }
};
template <typename F>
struct BackwardLauncher {
  template <typename... Args>
  static void Run(Args... args) {
    LaunchBackward<F>(args...);
  }
};

bool ValidDims(const AttentionDims& s, ComputeDtype dtype) {
  return dtype != ComputeDtype::kFp32 && s.head_dim >= 16 && s.head_dim <= 128 && s.head_dim % 16 == 0 &&
         s.kv_heads > 0 && s.heads % s.kv_heads == 0 && s.window >= 0;
}

}  // namespace

bool FlashAttentionSupported(const AttentionDims& s, ComputeDtype dtype, int sm) {
  return sm >= 80 && ValidDims(s, dtype);
}

cudaError_t LaunchFlashAttentionForward(const AttentionDims& s, ComputeDtype dtype, const float* q, const float* k,
                                        const float* v, float* out, float* lse, cudaStream_t stream) {
  if (!ValidDims(s, dtype)) return cudaErrorInvalidValue;
  if (s.batch * s.seq_len == 0) return cudaSuccess;
  Dispatch<ForwardLauncher>(dtype, s.head_dim, s, q, k, v, out, lse, stream);
  return cudaGetLastError();
}

cudaError_t LaunchFlashAttentionBackward(const AttentionDims& s, ComputeDtype dtype, const float* q, const float* k,
                                         const float* v, const float* out, const float* lse, const float* dout,
                                         float* D, float* dq, float* dk, float* dv, cudaStream_t stream) {
  if (!ValidDims(s, dtype)) return cudaErrorInvalidValue;
  if (s.batch * s.seq_len == 0) return cudaSuccess;
  const int64_t rows = s.batch * s.seq_len * s.heads;
  HM_LAUNCH(AttentionRowDotKernel, BlocksFor(rows, kAttentionRowsPerBlock), kAttentionRowsPerBlock * kWarpSize, 0,
            stream)(s, out, dout, D);
  Dispatch<BackwardLauncher>(dtype, s.head_dim, s, q, k, v, dout, lse, static_cast<const float*>(D), dq, dk, dv,
                             stream);
  return cudaGetLastError();
}

}  // namespace hetermoe::kernels
