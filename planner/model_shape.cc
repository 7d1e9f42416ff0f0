// ModelShape from a Mixtral config, and parameter counts (see model.md for
// the tensor list these counts mirror).
#include "planner/model_shape.h"

#include <utility>

namespace hetermoe::planner {

ModelShape ModelShape::FromMixtral(const io::MixtralConfig& config, std::string source) {
  ModelShape shape;
  shape.layers = config.num_hidden_layers;
  shape.hidden = config.hidden_size;
  shape.ffn = config.intermediate_size;
  shape.heads = config.num_attention_heads;
  shape.kv_heads = config.num_key_value_heads;
  shape.head_dim = config.HeadDim();
  shape.experts = config.num_local_experts;
  shape.top_k = config.num_experts_per_tok;
  shape.vocab = config.vocab_size;
  shape.max_positions = config.max_position_embeddings;
  shape.tied_embeddings = config.tie_word_embeddings;
  shape.source = std::move(source);
  return shape;
}

double ModelShape::ExpertParams() const {
  return 3.0 * static_cast<double>(hidden) * static_cast<double>(ffn);
}

double ModelShape::AttentionParamsPerLayer() const {
  const double d = static_cast<double>(hidden);
  const double q = static_cast<double>(heads * head_dim);
  const double kv = static_cast<double>(kv_heads * head_dim);
  return d * q + 2.0 * d * kv + q * d   // q, k, v, o projections
         + d * static_cast<double>(experts)  // gate
         + 2.0 * d;                          // input and post-attention norms
}

double ModelShape::ExpertlessParams() const {
  const double d = static_cast<double>(hidden);
  return (tied_embeddings ? 1.0 : 2.0) * static_cast<double>(vocab) * d  // embed_tokens, lm_head unless tied
         + d                                   // final norm
         + static_cast<double>(layers) * AttentionParamsPerLayer();
}

}  // namespace hetermoe::planner
