// Causal (optionally sliding-window) grouped-query attention on tensor
// cores: FlashAttention-2 with mma.sync m16n8k16 (kernels/mma.cuh), bf16 or
// fp16 operands and fp32 accumulation, on sm_80 and newer. Same contract as
// the fp32 kernels of kernels/attention.cuh (which stay the reference and the
// path for older GPUs): q[B*T, H*hd], k/v[B*T, KV*hd], out[B*T, H*hd] and
// lse[B, H, T] in fp32 global memory; operands are rounded to 16 bits as they
// are staged into shared memory.
//
// Work layout: a block is 4 warps, each owning 16 rows (64 per block).
//  - Forward, per (sequence, head, 64 queries): the warp keeps its queries'
//    A fragments, S = Q K^T for a tile of 64 keys, the online softmax (row
//    max and sum over the quad of lanes sharing a row), then P (rounded to
//    16 bits, straight from the accumulators) times V into the output
//    accumulators; out = O / l, lse = m + log l.
//  - Backward, two kernels so no gradient needs atomics (deterministic):
//    dq per (sequence, head, 64 queries) over tiles of 32 keys (S, dP =
//    dO V^T, dS = P (dP - D) scale, dQ += dS K); dk, dv per (sequence, KV
//    head, 64 keys) over the group's heads and tiles of 32 queries (S^T,
//    dP^T, dV += P^T dO, dK += dS^T Q). D = rowsum(dO * O) as in attention.cuh.
//  - Only key tiles a block can see are visited: causal (key <= query) and,
//    with a window W > 0, query - key < W (Mistral's sliding window).
//
// Which kernel runs where (FlashAttentionSupported): the attention ranks'
// GPUs (A40 sm_86, A100 sm_80, H100 sm_90) run this one in bf16 or fp16
// runs; V100 (sm_70) and T4 (sm_75) have no m16n8k16 bf16/f16 instruction
// and run the fp32 kernels, as do fp32 runs and head dims that are not a
// multiple of 16 or exceed 128.
#pragma once

#include <cuda_runtime.h>

#include "kernels/attention.cuh"
#include "kernels/precision.h"

namespace hetermoe::kernels {

constexpr int kFlashWarps = 4;
constexpr int kFlashRows = 16 * kFlashWarps;  // rows a block owns
constexpr int kFlashForwardKeys = 64;         // key tile of the forward
constexpr int kFlashBackwardTile = 32;        // partner tile of the backward

// sm = 10 * major + minor. True when the tensor-core kernels can run these
// dims on that GPU in that precision.
bool FlashAttentionSupported(const AttentionDims& s, ComputeDtype dtype, int sm);

// Errors with cudaErrorInvalidValue when !FlashAttentionSupported for sm_80.
cudaError_t LaunchFlashAttentionForward(const AttentionDims& s, ComputeDtype dtype, const float* q,
                                        const float* k, const float* v, float* out, float* lse,
                                        cudaStream_t stream);
// Overwrites dq, dk, dv. D is scratch of B*H*T floats.
cudaError_t LaunchFlashAttentionBackward(const AttentionDims& s, ComputeDtype dtype, const float* q,
                                         const float* k, const float* v, const float* out,
                                         const float* lse, const float* dout, float* D, float* dq,
                                         float* dk, float* dv, cudaStream_t stream);

}  // namespace hetermoe::kernels
