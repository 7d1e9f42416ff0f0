// Rotary position embedding, rotate-half convention (Hugging Face Llama/Mixtral).
#pragma once

#include <cstdint>
#include <vector>

#include "common/mixtral_config.h"

namespace hetermoe::ops {

// cos/sin tables [T, hd/2] for positions 0..T-1.
struct RopeTable {
  int64_t seq_len = 0, half = 0;
  std::vector<float> cos, sin;
};
RopeTable MakeRopeTable(int64_t seq_len, int64_t head_dim, float theta);
// With the config's rope_scaling, as transformers computes it (in fp32):
//  - linear: every inverse frequency divided by factor;
//  - dynamic (NTK): theta * (factor * S / P - (factor - 1))^(hd / (hd - 2))
//    with P = max_position_embeddings and S = max(T, P): for the sequences
//    this trainer accepts (T <= P) the same tables as none;
//  - yarn: per frequency a blend of the original and the interpolated
//    (/ factor) one, by a linear ramp between the dims that make beta_fast and
//    beta_slow rotations over the original context; cos and sin times the
//    attention factor (0.1 ln(factor) + 1 unless given).
RopeTable MakeRopeTable(int64_t seq_len, const io::MixtralConfig& config);
// The inverse frequencies [hd/2] and the factor on cos/sin of that.
std::vector<float> RopeInverseFrequencies(int64_t seq_len, const io::MixtralConfig& config, float* attention_factor);

// In place on x[B*T, heads*hd]; token n sits at position n % T.
// inverse = true applies the transpose (backward).
void RopeApply(const RopeTable& table, int64_t tokens, int64_t heads, float* x, bool inverse);

}  // namespace hetermoe::ops
