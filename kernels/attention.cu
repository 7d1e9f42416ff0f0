#include <cmath>

#include "kernels/attention.cuh"
#include "kernels/common.cuh"
#include "kernels/shared/math.h"

namespace hetermoe::kernels {
namespace {

// Loads the hd elements at m[index ..] (a row, valid when row_ok; zeros
// otherwise) into this lane's registers: reg[i] = m[index + lane + 32 i].
__device__ __forceinline__ void LoadRowToLanes(const float* m, int64_t index, bool row_ok,
                                               int64_t hd, int lane, float (&reg)[kAttentionMaxPerLane]) {
#pragma unroll
  for (int i = 0; i < kAttentionMaxPerLane; ++i) {
    const int64_t c = lane + kWarpSize * i;
    reg[i] = (row_ok && c < hd) ? m[index + c] : 0.0f;
  }
}

// Dot product of the lane-split register row with shared-memory row `srow`;
// every lane gets the result. Elements past hd are zero in reg and skipped.
__device__ __forceinline__ float DotWithShared(const float (&reg)[kAttentionMaxPerLane],
                                               const float* srow, int64_t hd, int lane) {
  float partial = 0.0f;
#pragma unroll
  for (int i = 0; i < kAttentionMaxPerLane; ++i) {
    const int64_t c = lane + kWarpSize * i;
    if (c < hd) partial += reg[i] * srow[c];
  }
  return WarpSum(partial);
}

// Block-wide copy of rows [row0, row0 + tile) of head `head` (of `heads`) of
// a [B*T, heads*hd] matrix for sequence b into tile[tile_rows, hd]; rows past
// the sequence are zero-filled. Caller synchronises around it.
__device__ __forceinline__ void LoadTile(const float* m, int64_t b, int64_t row0, int64_t head,
                                         int64_t heads, const AttentionDims& s, int tile_rows,
                                         float* tile) {
  const int64_t hd = s.head_dim;
  for (int64_t idx = threadIdx.x; idx < tile_rows * hd; idx += blockDim.x) {
    const int64_t r = idx / hd, c = idx % hd, t = row0 + r;
    tile[idx] = t < s.seq_len ? m[((b * s.seq_len + t) * heads + head) * hd + c] : 0.0f;
  }
}

}  // namespace

int AttentionTileRows(int64_t head_dim) { return head_dim <= 128 ? 32 : 16; }

__global__ void AttentionForwardKernel(AttentionDims s, int tile, const float* q, const float* k,
                                       const float* v, float* out, float* lse) {
  HM_DYNAMIC_SHARED(float, smem);
  float* ks = smem;                    // [tile, hd]
  float* vs = smem + tile * s.head_dim;  // [tile, hd]
  const int64_t T = s.seq_len, H = s.heads, KV = s.kv_heads, hd = s.head_dim;
  const int64_t b = blockIdx.x / H, h = blockIdx.x % H, kvh = h / (H / KV);
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t first_row = static_cast<int64_t>(blockIdx.y) * kAttentionRowsPerBlock;
  const int64_t t = first_row + warp;  // this warp's query row
  const bool active = t < T;           // warp-uniform
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  const int64_t q_index = ((b * T + t) * H + h) * hd;

  float qr[kAttentionMaxPerLane], acc[kAttentionMaxPerLane];
  LoadRowToLanes(q, q_index, active, hd, lane, qr);
#pragma unroll
  for (int i = 0; i < kAttentionMaxPerLane; ++i) acc[i] = 0.0f;
  float m = -INFINITY, l = 0.0f;

  // Keys up to the block's last query row (causal horizon of the block).
  const int64_t last_key = min(T - 1, first_row + kAttentionRowsPerBlock - 1);
  const int64_t row_first_key = AttentionFirstKey(t, s.window);
  for (int64_t k0 = AttentionFirstKey(first_row, s.window); k0 <= last_key; k0 += tile) {
    __syncthreads();  // every warp is done with the previous tile
    LoadTile(k, b, k0, kvh, KV, s, tile, ks);
    LoadTile(v, b, k0, kvh, KV, s, tile, vs);
    __syncthreads();
    if (!active) continue;
    // Keys max(first key, k0) .. min(t, k0 + tile - 1) of this tile are visible to row t.
    const int64_t visible = min(static_cast<int64_t>(tile), t - k0 + 1);
    for (int64_t r = max(int64_t{0}, row_first_key - k0); r < visible; ++r) {
      const float score = DotWithShared(qr, ks + r * hd, hd, lane) * scale;
      const float m_new = fmaxf(m, score);
      const float correction = expf(m - m_new);  // 0 on the first key (m = -inf)
      const float p = expf(score - m_new);
      l = l * correction + p;
#pragma unroll
      for (int i = 0; i < kAttentionMaxPerLane; ++i) {
        const int64_t c = lane + kWarpSize * i;
        if (c < hd) acc[i] = acc[i] * correction + p * vs[r * hd + c];
      }
      m = m_new;
    }
  }
  if (!active) return;
  const float inv = 1.0f / l;  // l >= 1: the row's maximum key contributes exp(0)
#pragma unroll
  for (int i = 0; i < kAttentionMaxPerLane; ++i) {
    const int64_t c = lane + kWarpSize * i;
    if (c < hd) out[q_index + c] = acc[i] * inv;
  }
  if (lane == 0) lse[(b * H + h) * T + t] = m + logf(l);
}

__global__ void AttentionRowDotKernel(AttentionDims s, const float* out, const float* dout, float* D) {
  // Row index over [B, T, H] in memory order; D is laid out [B, H, T].
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kAttentionRowsPerBlock + threadIdx.x / kWarpSize;
  const int64_t rows = s.batch * s.seq_len * s.heads;
  if (row >= rows) return;  // warp-uniform
  const int lane = threadIdx.x % kWarpSize;
  const int64_t hd = s.head_dim, h = row % s.heads, bt = row / s.heads;
  const int64_t b = bt / s.seq_len, t = bt % s.seq_len;
  float partial = 0.0f;
  for (int64_t c = lane; c < hd; c += kWarpSize) partial += dout[row * hd + c] * out[row * hd + c];
  const float dot = WarpSum(partial);
  if (lane == 0) D[(b * s.heads + h) * s.seq_len + t] = dot;
}

__global__ void AttentionBackwardQueryKernel(AttentionDims s, int tile, const float* q,
                                             const float* k, const float* v, const float* dout,
                                             const float* lse, const float* D, float* dq) {
  HM_DYNAMIC_SHARED(float, smem);
  float* ks = smem;
  float* vs = smem + tile * s.head_dim;
  const int64_t T = s.seq_len, H = s.heads, KV = s.kv_heads, hd = s.head_dim;
  const int64_t b = blockIdx.x / H, h = blockIdx.x % H, kvh = h / (H / KV);
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t first_row = static_cast<int64_t>(blockIdx.y) * kAttentionRowsPerBlock;
  const int64_t t = first_row + warp;
  const bool active = t < T;
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  const int64_t q_index = ((b * T + t) * H + h) * hd;

  float qr[kAttentionMaxPerLane], dor[kAttentionMaxPerLane], acc[kAttentionMaxPerLane];
  LoadRowToLanes(q, q_index, active, hd, lane, qr);
  LoadRowToLanes(dout, q_index, active, hd, lane, dor);
#pragma unroll
  for (int i = 0; i < kAttentionMaxPerLane; ++i) acc[i] = 0.0f;
  const float row_lse = active ? lse[(b * H + h) * T + t] : 0.0f;
  const float row_D = active ? D[(b * H + h) * T + t] : 0.0f;

  const int64_t last_key = min(T - 1, first_row + kAttentionRowsPerBlock - 1);
  const int64_t row_first_key = AttentionFirstKey(t, s.window);
  for (int64_t k0 = AttentionFirstKey(first_row, s.window); k0 <= last_key; k0 += tile) {
    __syncthreads();
    LoadTile(k, b, k0, kvh, KV, s, tile, ks);
    LoadTile(v, b, k0, kvh, KV, s, tile, vs);
    __syncthreads();
    if (!active) continue;
    const int64_t visible = min(static_cast<int64_t>(tile), t - k0 + 1);
    for (int64_t r = max(int64_t{0}, row_first_key - k0); r < visible; ++r) {
      const float p = expf(DotWithShared(qr, ks + r * hd, hd, lane) * scale - row_lse);
      const float dp = DotWithShared(dor, vs + r * hd, hd, lane);
      const float ds = math::AttentionScoreGrad(p, dp, row_D, scale);
#pragma unroll
      for (int i = 0; i < kAttentionMaxPerLane; ++i) {
        const int64_t c = lane + kWarpSize * i;
        if (c < hd) acc[i] += ds * ks[r * hd + c];
      }
    }
  }
  if (!active) return;
#pragma unroll
  for (int i = 0; i < kAttentionMaxPerLane; ++i) {
    const int64_t c = lane + kWarpSize * i;
    if (c < hd) dq[q_index + c] = acc[i];
  }
}

__global__ void AttentionBackwardKeyValueKernel(AttentionDims s, int tile, const float* q,
                                                const float* k, const float* v,
                                                const float* dout, const float* lse,
                                                const float* D, float* dk, float* dv) {
  HM_DYNAMIC_SHARED(float, smem);
  float* qs = smem;                          // [tile, hd] queries of one head
  float* dos = smem + tile * s.head_dim;     // [tile, hd] their output gradients
  float* lses = smem + 2 * tile * s.head_dim;  // [tile]
  float* Ds = lses + tile;                     // [tile]
  const int64_t T = s.seq_len, H = s.heads, KV = s.kv_heads, hd = s.head_dim;
  const int64_t group = H / KV;
  const int64_t b = blockIdx.x / KV, kvh = blockIdx.x % KV;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t first_row = static_cast<int64_t>(blockIdx.y) * kAttentionRowsPerBlock;
  const int64_t j = first_row + warp;  // this warp's key row
  const bool active = j < T;
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  const int64_t kv_index = ((b * T + j) * KV + kvh) * hd;

  float kr[kAttentionMaxPerLane], vr[kAttentionMaxPerLane];
  float dk_acc[kAttentionMaxPerLane], dv_acc[kAttentionMaxPerLane];
  LoadRowToLanes(k, kv_index, active, hd, lane, kr);
  LoadRowToLanes(v, kv_index, active, hd, lane, vr);
#pragma unroll
  for (int i = 0; i < kAttentionMaxPerLane; ++i) dk_acc[i] = dv_acc[i] = 0.0f;

  for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
    // Queries first_row <= t < last_row + window can see some key of this block.
    const int64_t end_query =
        s.window > 0 ? min(T, first_row + kAttentionRowsPerBlock - 1 + s.window) : T;
    for (int64_t q0 = first_row; q0 < end_query; q0 += tile) {
      __syncthreads();
      LoadTile(q, b, q0, h, H, s, tile, qs);
      LoadTile(dout, b, q0, h, H, s, tile, dos);
      for (int r = threadIdx.x; r < tile; r += blockDim.x) {
        const int64_t t = q0 + r;
        lses[r] = t < T ? lse[(b * H + h) * T + t] : 0.0f;
        Ds[r] = t < T ? D[(b * H + h) * T + t] : 0.0f;
      }
      __syncthreads();
      if (!active) continue;
      for (int r = 0; r < tile; ++r) {
        const int64_t t = q0 + r;
        if (t >= T) break;
        if (!AttentionVisible(t, j, s.window)) continue;  // causal, and within the window
        const float p = expf(DotWithShared(kr, qs + r * hd, hd, lane) * scale - lses[r]);
        const float dp = DotWithShared(vr, dos + r * hd, hd, lane);
        const float ds = math::AttentionScoreGrad(p, dp, Ds[r], scale);
#pragma unroll
        for (int i = 0; i < kAttentionMaxPerLane; ++i) {
          const int64_t c = lane + kWarpSize * i;
          if (c < hd) {
            dk_acc[i] += ds * qs[r * hd + c];
            dv_acc[i] += p * dos[r * hd + c];
          }
        }
      }
    }
  }
  if (!active) return;
#pragma unroll
  for (int i = 0; i < kAttentionMaxPerLane; ++i) {
    const int64_t c = lane + kWarpSize * i;
    if (c < hd) {
      dk[kv_index + c] = dk_acc[i];
      dv[kv_index + c] = dv_acc[i];
    }
  }
}

namespace {
cudaError_t CheckDims(const AttentionDims& s) {
  if (s.head_dim <= 0 || s.head_dim > kWarpSize * kAttentionMaxPerLane || s.kv_heads <= 0 ||
      s.heads % s.kv_heads != 0 || s.window < 0)
    return cudaErrorInvalidValue;
  return cudaSuccess;
}
constexpr int kAttentionThreads = kAttentionRowsPerBlock * kWarpSize;
}  // namespace

cudaError_t LaunchAttentionForward(const AttentionDims& s, const float* q, const float* k,
                                   const float* v, float* out, float* lse, cudaStream_t stream) {
  if (const cudaError_t err = CheckDims(s); err != cudaSuccess) return err;
  if (s.batch * s.seq_len == 0) return cudaSuccess;
  const int tile = AttentionTileRows(s.head_dim);
  const dim3 grid(static_cast<unsigned>(s.batch * s.heads), BlocksFor(s.seq_len, kAttentionRowsPerBlock));
  const size_t smem = sizeof(float) * 2 * tile * s.head_dim;
  HM_LAUNCH(AttentionForwardKernel, grid, kAttentionThreads, smem, stream)(s, tile, q, k, v, out, lse);
  return cudaGetLastError();
}

cudaError_t LaunchAttentionBackward(const AttentionDims& s, const float* q, const float* k,
                                    const float* v, const float* out, const float* lse,
                                    const float* dout, float* D, float* dq, float* dk, float* dv,
                                    cudaStream_t stream) {
  if (const cudaError_t err = CheckDims(s); err != cudaSuccess) return err;
  if (s.batch * s.seq_len == 0) return cudaSuccess;
  const int tile = AttentionTileRows(s.head_dim);
  const int64_t rows = s.batch * s.seq_len * s.heads;
  HM_LAUNCH(AttentionRowDotKernel, BlocksFor(rows, kAttentionRowsPerBlock), kAttentionThreads, 0, stream)(
      s, out, dout, D);
  const unsigned row_blocks = BlocksFor(s.seq_len, kAttentionRowsPerBlock);
  const size_t smem_q = sizeof(float) * 2 * tile * s.head_dim;
  HM_LAUNCH(AttentionBackwardQueryKernel, dim3(static_cast<unsigned>(s.batch * s.heads), row_blocks), kAttentionThreads, smem_q, stream)(s, tile, q, k, v, dout, lse, D, dq);
  const size_t smem_kv = sizeof(float) * (2 * tile * s.head_dim + 2 * tile);
  HM_LAUNCH(AttentionBackwardKeyValueKernel, dim3(static_cast<unsigned>(s.batch * s.kv_heads), row_blocks), kAttentionThreads, smem_kv, stream)(s, tile, q, k, v, dout, lse,
                                                                           D, dk, dv);
  return cudaGetLastError();
}

}  // namespace hetermoe::kernels
