// Rotary position embedding, rotate-half convention (Hugging Face Llama/Mixtral).
#pragma once

#include <cstdint>
#include <vector>

namespace hetermoe::ops {

// cos/sin tables [T, hd/2] for positions 0..T-1.
struct RopeTable {
  int64_t seq_len = 0, half = 0;
  std::vector<float> cos, sin;
};
RopeTable MakeRopeTable(int64_t seq_len, int64_t head_dim, float theta);

// In place on x[B*T, heads*hd]; token n sits at position n % T.
// inverse = true applies the transpose (backward).
void RopeApply(const RopeTable& table, int64_t tokens, int64_t heads, float* x, bool inverse);

}  // namespace hetermoe::ops
