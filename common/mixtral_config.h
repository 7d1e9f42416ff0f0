// MixtralConfig: the model's shape, read from a Hugging Face `config.json`.
//
// Keys and defaults follow transformers' MixtralConfig (see
// docs/model.md). Parsing validates every constraint the trainer
// relies on (positive sizes, H % KV == 0, top-k <= E, ...) and throws
// hetermoe::Error naming the file and the key.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace hetermoe::io {

// Hugging Face's `rope_scaling` (transformers' modeling_rope_utils): how the
// RoPE frequencies are stretched for longer contexts. trainer/ops/rope.h
// computes the tables.
struct RopeScaling {
  std::string type;   // "" (none, or "default"), "linear", "dynamic" or "yarn"
  double factor = 1;  // >= 1
  // yarn only: the context the model was trained with (0: the config's
  // max_position_embeddings), the ramp's rotation bounds, and the factor on
  // cos and sin (0: 0.1 ln(factor) + 1).
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32, beta_slow = 1;
  double attention_factor = 0;
};

struct MixtralConfig {
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;            // d
  int64_t intermediate_size = 14336;     // f, the expert FFN width
  int64_t num_hidden_layers = 32;        // L
  int64_t num_attention_heads = 32;      // H
  int64_t num_key_value_heads = 8;       // KV (grouped-query attention)
  int64_t head_dim = 0;                  // hd; 0 in the file = d / H
  int64_t num_local_experts = 8;         // E
  int64_t num_experts_per_tok = 2;       // top-k
  int64_t max_position_embeddings = 4096 * 32;
  double rms_norm_eps = 1e-5;
  double rope_theta = 1e6;
  double router_aux_loss_coef = 0.001;
  double initializer_range = 0.02;
  bool tie_word_embeddings = false;
  // Mistral's sliding-window attention: token i attends keys i - w < j <= i.
  // 0 (null or absent): every earlier token.
  int64_t sliding_window = 0;
  RopeScaling rope_scaling;

  int64_t HeadDim() const { return head_dim > 0 ? head_dim : hidden_size / num_attention_heads; }
};

// `source` names the input in error messages (usually the file path).
MixtralConfig ParseMixtralConfig(const nlohmann::json& j, const std::string& source);
MixtralConfig ParseMixtralConfigText(const std::string& text, const std::string& source);
MixtralConfig LoadMixtralConfig(const std::string& path);


// A Hugging Face config.json for the model (model_type "mixtral",
// architectures ["MixtralForCausalLM"], torch_dtype "float32").
nlohmann::json MixtralConfigToJson(const MixtralConfig& config);

// MixtralConfigToJson(config), keeping every other key of `original` (the
// config.json the run was given) as it was: an exported checkpoint carries
// what the trainer does not use (token ids, use_cache, ...). `kept` (may be
// null) receives those keys' names.
nlohmann::json MixtralConfigToJsonKeeping(const MixtralConfig& config, const nlohmann::json& original,
                                          std::vector<std::string>* kept = nullptr);

}  // namespace hetermoe::io
