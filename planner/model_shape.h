// ModelShape: the numbers of a Mixtral-style MoE model that cost and memory
// depend on, taken from a Hugging Face config (io::MixtralConfig).
//
// Notation used across the planner (as in HeterMoE): L layers (MoE blocks),
// n experts per layer, k experts per token (top-k), d hidden size, f expert
// FFN width, T sequence length. "Attention" means everything of a layer that
// is not an expert: input norm, q/k/v/o projections, the attention kernel,
// the post-attention norm and the router (gate). The "head" is what follows
// the last layer: final norm, LM head and the loss.
#pragma once

#include <cstdint>
#include <string>

#include "common/mixtral_config.h"

namespace hetermoe::planner {

struct ModelShape {
  int64_t layers = 0;       // L
  int64_t hidden = 0;       // d
  int64_t ffn = 0;          // f
  int64_t heads = 0;        // H
  int64_t kv_heads = 0;     // KV
  int64_t head_dim = 0;     // hd
  int64_t experts = 0;      // n, per layer
  int64_t top_k = 0;        // k
  int64_t vocab = 0;        // V
  int64_t max_positions = 0;
  bool tied_embeddings = false;  // lm_head is embed_tokens (tie_word_embeddings)
  std::string source;       // the config file, for messages

  static ModelShape FromMixtral(const io::MixtralConfig& config, std::string source);

  // Parameters of one expert (w1, w2, w3).
  double ExpertParams() const;
  // Parameters of one layer's attention part (projections, norms, gate).
  double AttentionParamsPerLayer() const;
  // Everything but the experts: embeddings, LM head, final norm, and every
  // layer's attention part. This is what an attention rank replicates.
  double ExpertlessParams() const;
};

}  // namespace hetermoe::planner
