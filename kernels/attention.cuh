// Causal grouped-query attention on the GPU, memory-efficient (the T x T
// scores never reach global memory). CPU twin: trainer/ops/attention, with
// the same contract: q[B*T, H*hd], k/v[B*T, KV*hd], out[B*T, H*hd],
// lse[B, H, T]; query head h reads KV head h / (H / KV); scale 1/sqrt(hd).
//
// Layout of the work (one warp = one row, lanes split the head dim):
//  - lane l holds elements c = l + 32 i (i < kAttentionMaxPerLane) of its
//    row in registers, so head_dim <= 32 * kAttentionMaxPerLane = 256; a dot
//    product is a per-lane partial sum plus a warp reduction;
//  - a block = kAttentionRowsPerBlock warps = that many consecutive rows; the
//    rows' partners (keys for a query row, queries for a key row) are staged
//    through shared memory in tiles of `tile` rows, loaded by the whole block;
//  - causality: query t sees keys j <= t (and t - j < window with a sliding
//    window). A block never loads a tile outside its rows' horizon, and each
//    warp masks the rest.
//
// Forward (per query row t): online softmax over the key tiles, keeping the
// running max m, the running sum l and the unnormalised output in registers;
// out = acc / l, lse = m + log l.
// Backward, FlashAttention's recomputation, split into two deterministic
// kernels so no gradient needs atomics:
//  - D[t] = dout[t] . out[t] (one warp per row);
//  - dq: per query row, over keys j <= t: p = exp(q.k*scale - lse),
//    dp = dout.v_j, ds = p (dp - D) scale, dq += ds k_j;
//  - dk, dv: per key row j of a KV head, over every query head of its group
//    and queries t >= j: dk += ds q_t, dv += p dout_t.
// The probabilities are recomputed twice (once per kernel): twice the FLOPs of
// a fused backward, in exchange for no atomics and no races.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace hetermoe::kernels {

constexpr int kAttentionRowsPerBlock = 8;  // warps per block
constexpr int kAttentionMaxPerLane = 8;    // head_dim <= 256

struct AttentionDims {
  int64_t batch, seq_len, heads, kv_heads, head_dim;
  // Sliding window (Mistral/Mixtral): query t sees key j when t - W < j <= t;
  // 0 = no window (every earlier key).
  int64_t window = 0;
};

// Whether query t sees key j.
__host__ __device__ __forceinline__ bool AttentionVisible(int64_t t, int64_t j, int64_t window) {
  return j <= t && (window <= 0 || t - j < window);
}
// The first key query t sees.
__host__ __device__ __forceinline__ int64_t AttentionFirstKey(int64_t t, int64_t window) {
  return window <= 0 || t < window ? 0 : t - window + 1;
}

// Partner rows staged per shared-memory tile: 32, or 16 for head_dim > 128,
// keeping two tiles of [tile, head_dim] floats within 32 KiB.
int AttentionTileRows(int64_t head_dim);

// --- kernels ---
// grid (B * H, ceil(T / rows)); dynamic shared memory 2 * tile * hd floats.
__global__ void AttentionForwardKernel(AttentionDims s, int tile, const float* q, const float* k,
                                       const float* v, float* out, float* lse);
// grid (ceil(B*T*H / rows)); D[(b*H + h)*T + t] = dout . out.
__global__ void AttentionRowDotKernel(AttentionDims s, const float* out, const float* dout, float* D);
// grid (B * H, ceil(T / rows)); shared memory 2 * tile * hd floats.
__global__ void AttentionBackwardQueryKernel(AttentionDims s, int tile, const float* q,
                                             const float* k, const float* v, const float* dout,
                                             const float* lse, const float* D, float* dq);
// grid (B * KV, ceil(T / rows)); shared memory (2 * tile * hd + 2 * tile) floats.
__global__ void AttentionBackwardKeyValueKernel(AttentionDims s, int tile, const float* q,
                                                const float* k, const float* v,
                                                const float* dout, const float* lse,
                                                const float* D, float* dk, float* dv);

// --- launchers ---
// Errors with cudaErrorInvalidValue when head_dim > 256 or H % KV != 0.
cudaError_t LaunchAttentionForward(const AttentionDims& s, const float* q, const float* k,
                                   const float* v, float* out, float* lse, cudaStream_t stream);
// Overwrites dq, dk, dv. D is scratch of B*H*T floats.
cudaError_t LaunchAttentionBackward(const AttentionDims& s, const float* q, const float* k,
                                    const float* v, const float* out, const float* lse,
                                    const float* dout, float* D, float* dq, float* dk, float* dv,
                                    cudaStream_t stream);

}  // namespace hetermoe::kernels
