// Model shapes the planner tests use: Mixtral-8x7B (the shapes HeterMoE
// measured its GPU ratios on) and the paper's evaluation models W1 and D1.
//
// HeterMoE names its models layers x hidden x experts (W1 4x2048x12, D1
// 8x1024x24), Mixtral-style, top-2. The paper summary does not give the FFN
// width or the head counts: we take Mixtral's ratios [inferred]: f = 3.5 d,
// head_dim 128, 4 query heads per KV head, vocabulary 32000.
#pragma once

#include "planner/model_shape.h"

namespace hetermoe::planner::testing {

inline ModelShape MixtralShape(int64_t layers, int64_t hidden, int64_t experts, const char* name) {
  ModelShape s;
  s.layers = layers;
  s.hidden = hidden;
  s.ffn = hidden * 7 / 2;
  s.head_dim = 128;
  s.heads = hidden / 128;
  s.kv_heads = s.heads / 4;
  s.experts = experts;
  s.top_k = 2;
  s.vocab = 32000;
  s.max_positions = 65536;
  s.source = name;
  return s;
}

inline ModelShape Mixtral8x7B() {
  ModelShape s = MixtralShape(32, 4096, 8, "mixtral-8x7b");
  s.ffn = 14336;
  s.kv_heads = 8;
  return s;
}
inline ModelShape W1() { return MixtralShape(4, 2048, 12, "W1"); }
inline ModelShape D1() { return MixtralShape(8, 1024, 24, "D1"); }

}  // namespace hetermoe::planner::testing
