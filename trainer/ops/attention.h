// Causal grouped-query self-attention core (after projections and RoPE),
// optionally with a sliding window.
//
// Shapes: q[B*T, H*hd], k/v[B*T, KV*hd], out[B*T, H*hd]; query head h reads
// KV head h / (H/KV). Memory-efficient: the T x T probabilities are never
// stored; forward keeps the per-row log-sum-exp lse[B, H, T] and backward
// recomputes the probabilities from it (FlashAttention's recipe).
#pragma once

#include <cstdint>

namespace hetermoe::ops {

struct AttentionShape {
  int64_t batch, seq_len, heads, kv_heads, head_dim;
  // Sliding window (Mistral/Mixtral): query t sees keys t - window < j <= t;
  // 0 = every earlier key.
  int64_t window = 0;
};

void AttentionForward(const AttentionShape& s, const float* q, const float* k, const float* v,
                      float* out, float* lse);
// Writes (overwrites) dq, dk, dv.
void AttentionBackward(const AttentionShape& s, const float* q, const float* k, const float* v,
                       const float* out, const float* lse, const float* dout, float* dq,
                       float* dk, float* dv);

}  // namespace hetermoe::ops
