// MixtralConfig parsing, validation and serialisation (see mixtral_config.h).
//
// The file is a Hugging Face config.json: unknown keys are ignored (HF
// configs carry many the trainer has no use for), a null value means "use the
// default", and every key the trainer reads is type-checked and validated.
// Every error is one line: `<source>: key "<key>": <problem>`.
#include "common/mixtral_config.h"

#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/file_bytes.h"

namespace hetermoe::io {
namespace {

using nlohmann::json;

// Reads typed keys out of one config object, naming `source` and the key in
// every error. Never copies or dumps a value of unknown size: the input may
// be adversarial (deeply nested, huge), and both are recursive in nlohmann.
class KeyReader {
 public:
  KeyReader(const json& object, const std::string& source) : object_(object), source_(source) {}

  [[noreturn]] void Fail(const std::string& key, const std::string& problem) const {
    throw Error(source_ + ": key \"" + key + "\": " + problem);
  }

  // nullptr when the key is absent or null (both mean "default").
  const json* Find(const std::string& key) const {
    auto it = object_.find(key);
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  int64_t Int(const std::string& key, const int64_t* fallback) const {
    const json* v = Find(key);
    if (v == nullptr) {
      if (fallback == nullptr) Fail(key, "is required");
      return *fallback;
    }
    if (v->is_number_unsigned()) {
      // Positive integers parse as uint64; above int64's range is an error.
      uint64_t u = v->get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        Fail(key, std::to_string(u) + " is out of range");
      }
      return static_cast<int64_t>(u);
    }
    if (v->is_number_integer()) return v->get<int64_t>();
    // A float such as 4096.0 is rejected too: transformers would pass it on
    // as a Python float and fail later in torch, so the file is wrong.
    Fail(key, "expected an integer, got " + Describe(*v));
  }

  double Double(const std::string& key, double fallback) const {
    const json* v = Find(key);
    if (v == nullptr) return fallback;
    if (!v->is_number()) Fail(key, "expected a number, got " + Describe(*v));
    return v->get<double>();
  }

  bool Bool(const std::string& key, bool fallback) const {
    const json* v = Find(key);
    if (v == nullptr) return fallback;
    if (!v->is_boolean()) Fail(key, "expected true or false, got " + Describe(*v));
    return v->get<bool>();
  }

  // nullptr when absent or null.
  const std::string* String(const std::string& key) const {
    const json* v = Find(key);
    if (v == nullptr) return nullptr;
    if (!v->is_string()) Fail(key, "expected a string, got " + Describe(*v));
    return v->get_ptr<const std::string*>();
  }

  // A string for an error message: truncated, and quoted by dump(), which
  // escapes control characters so the message stays on one line (`replace`
  // turns a multi-byte UTF-8 sequence cut by the truncation into U+FFFD).
  static std::string Quote(std::string s) {
    if (s.size() > 40) s = s.substr(0, 40) + "...";
    return json(s).dump(-1, ' ', false, json::error_handler_t::replace);
  }

  // A value for an error message: scalars are shown, containers by type only.
  static std::string Describe(const json& v) {
    if (v.is_number() || v.is_boolean()) return v.dump();
    if (v.is_string()) return "string " + Quote(v.get<std::string>());
    return v.type_name();
  }

 private:
  const json& object_;
  const std::string& source_;
};

// rope_scaling: {"rope_type" (or the older "type"): linear | dynamic | yarn |
// default, "factor": >= 1, yarn's keys}. A type or key this trainer does not
// implement is an error: it would train another model silently.
RopeScaling ParseRopeScaling(const json& rs, const KeyReader& keys, const std::string& source) {
  if (!rs.is_object()) keys.Fail("rope_scaling", "expected an object or null, got " + KeyReader::Describe(rs));
  const std::string where = source + ": rope_scaling";
  const KeyReader r(rs, where);
  const std::string* type = r.String("rope_type");
  if (type == nullptr) type = r.String("type");
  if (type == nullptr) keys.Fail("rope_scaling", "has no \"rope_type\" (or \"type\")");
  RopeScaling s;
  if (*type == "default") return s;
  if (*type != "linear" && *type != "dynamic" && *type != "yarn")
    keys.Fail("rope_scaling", "type " + KeyReader::Quote(*type) + " is not implemented (linear, dynamic and yarn are)");
  s.type = *type;
  const bool yarn = s.type == "yarn";
  for (const auto& item : rs.items()) {
    const std::string& key = item.key();
    const bool known = key == "rope_type" || key == "type" || key == "factor" ||
                       (yarn && (key == "original_max_position_embeddings" || key == "beta_fast" ||
                                 key == "beta_slow" || key == "attention_factor"));
    if (!known)
      keys.Fail("rope_scaling", "key " + KeyReader::Quote(key) + " is not supported with type \"" + s.type + "\"");
  }
  s.factor = r.Double("factor", 0);
  if (!(s.factor >= 1)) r.Fail("factor", "is required and must be at least 1");
  if (yarn) {
    const int64_t none = 0;
    s.original_max_position_embeddings = r.Int("original_max_position_embeddings", &none);
    if (s.original_max_position_embeddings < 0) r.Fail("original_max_position_embeddings", "must be positive");
    s.beta_fast = r.Double("beta_fast", s.beta_fast);
    s.beta_slow = r.Double("beta_slow", s.beta_slow);
    if (!(s.beta_fast > 0 && s.beta_slow > 0)) r.Fail("beta_fast", "beta_fast and beta_slow must be positive");
    s.attention_factor = r.Double("attention_factor", 0);
    if (s.attention_factor < 0) r.Fail("attention_factor", "must be positive");
  }
  return s;
}

void Validate(const MixtralConfig& c, const KeyReader& keys) {
  auto positive = [&](const char* key, int64_t v) {
    if (v <= 0) keys.Fail(key, std::to_string(v) + " must be positive");
  };
  positive("vocab_size", c.vocab_size);
  positive("hidden_size", c.hidden_size);
  positive("intermediate_size", c.intermediate_size);
  positive("num_hidden_layers", c.num_hidden_layers);
  positive("num_attention_heads", c.num_attention_heads);
  positive("num_key_value_heads", c.num_key_value_heads);
  positive("num_local_experts", c.num_local_experts);
  positive("num_experts_per_tok", c.num_experts_per_tok);
  positive("max_position_embeddings", c.max_position_embeddings);
  // head_dim 0 is how the struct (and older transformers) spell "d / H".
  if (c.head_dim < 0) keys.Fail("head_dim", std::to_string(c.head_dim) + " must be positive");

  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    keys.Fail("num_key_value_heads", std::to_string(c.num_key_value_heads) +
                                         " does not divide num_attention_heads " +
                                         std::to_string(c.num_attention_heads));
  }
  if (c.head_dim == 0 && c.hidden_size % c.num_attention_heads != 0) {
    keys.Fail("num_attention_heads", std::to_string(c.num_attention_heads) +
                                         " does not divide hidden_size " +
                                         std::to_string(c.hidden_size) + " and head_dim is not given");
  }
  if (c.num_experts_per_tok > c.num_local_experts) {
    keys.Fail("num_experts_per_tok", std::to_string(c.num_experts_per_tok) +
                                         " exceeds num_local_experts " +
                                         std::to_string(c.num_local_experts));
  }
  // RoPE's rotate_half splits each head in two equal halves.
  if (c.HeadDim() % 2 != 0) {
    keys.Fail(c.head_dim > 0 ? "head_dim" : "hidden_size",
              "head dimension " + std::to_string(c.HeadDim()) + " is odd; RoPE needs it even");
  }

  auto finite_positive = [&](const char* key, double v) {
    if (!(std::isfinite(v) && v > 0)) keys.Fail(key, json(v).dump() + " must be positive and finite");
  };
  finite_positive("rms_norm_eps", c.rms_norm_eps);
  finite_positive("rope_theta", c.rope_theta);
  if (!(std::isfinite(c.router_aux_loss_coef) && c.router_aux_loss_coef >= 0)) {
    keys.Fail("router_aux_loss_coef", json(c.router_aux_loss_coef).dump() + " must be non-negative");
  }
  if (!(std::isfinite(c.initializer_range) && c.initializer_range >= 0)) {
    keys.Fail("initializer_range", json(c.initializer_range).dump() + " must be non-negative");
  }

  // Downstream code sizes buffers as products of these numbers; reject a
  // model whose parameter count (the sum of model.md's tensor sizes) does not
  // fit in int64 rather than let it overflow there.
  bool fits = true;
  auto mul = [&](int64_t a, int64_t b) {
    int64_t r = 0;
    if (__builtin_mul_overflow(a, b, &r)) fits = false;
    return r;
  };
  auto add = [&](int64_t a, int64_t b) {
    int64_t r = 0;
    if (__builtin_add_overflow(a, b, &r)) fits = false;
    return r;
  };
  const int64_t d = c.hidden_size, hd = c.HeadDim();
  const int64_t attention = add(mul(mul(mul(c.num_attention_heads, hd), d), 2),   // q, o
                                mul(mul(mul(c.num_key_value_heads, hd), d), 2));  // k, v
  const int64_t moe = add(mul(c.num_local_experts, d),                             // gate
                          mul(mul(mul(c.intermediate_size, d), 3), c.num_local_experts));
  const int64_t layer = add(add(attention, moe), mul(d, 2));                       // + 2 norms
  add(add(mul(layer, c.num_hidden_layers), mul(mul(c.vocab_size, d), 2)), d);
  if (!fits) keys.Fail("hidden_size", "the model's parameter count overflows 64-bit integers");
}


// Both type keys, as transformers writes them.
json RopeScalingToJson(const RopeScaling& s) {
  if (s.type.empty()) return nullptr;
  json j = {{"rope_type", s.type}, {"type", s.type}, {"factor", s.factor}};
  if (s.type == "yarn") {
    if (s.original_max_position_embeddings > 0)
      j["original_max_position_embeddings"] = s.original_max_position_embeddings;
    j["beta_fast"] = s.beta_fast;
    j["beta_slow"] = s.beta_slow;
    if (s.attention_factor > 0) j["attention_factor"] = s.attention_factor;
  }
  return j;
}

}  // namespace

MixtralConfig ParseMixtralConfig(const json& j, const std::string& source) {
  if (!j.is_object()) throw Error(source + ": config is not a JSON object but " + j.type_name());
  KeyReader keys(j, source);
  const MixtralConfig defaults;
  MixtralConfig c;

  // The architecture is fixed by model.md; a config for another model type
  // (or activation, or RoPE variant) would train something else silently.
  if (const std::string* type = keys.String("model_type"); type && *type != "mixtral") {
    keys.Fail("model_type", KeyReader::Quote(*type) + " is not \"mixtral\"");
  }
  if (const std::string* act = keys.String("hidden_act"); act && *act != "silu") {
    keys.Fail("hidden_act",
              KeyReader::Quote(*act) + " is not supported (only \"silu\")");
  }
  if (const json* rs = keys.Find("rope_scaling")) c.rope_scaling = ParseRopeScaling(*rs, keys, source);

  c.vocab_size = keys.Int("vocab_size", nullptr);
  c.hidden_size = keys.Int("hidden_size", nullptr);
  c.intermediate_size = keys.Int("intermediate_size", nullptr);
  c.num_hidden_layers = keys.Int("num_hidden_layers", nullptr);
  c.num_attention_heads = keys.Int("num_attention_heads", nullptr);
  c.num_key_value_heads = keys.Int("num_key_value_heads", &c.num_attention_heads);
  const int64_t no_head_dim = 0;
  c.head_dim = keys.Int("head_dim", &no_head_dim);
  c.num_local_experts = keys.Int("num_local_experts", nullptr);
  c.num_experts_per_tok = keys.Int("num_experts_per_tok", nullptr);
  c.max_position_embeddings = keys.Int("max_position_embeddings", &defaults.max_position_embeddings);
  c.rms_norm_eps = keys.Double("rms_norm_eps", defaults.rms_norm_eps);
  c.rope_theta = keys.Double("rope_theta", defaults.rope_theta);
  c.router_aux_loss_coef = keys.Double("router_aux_loss_coef", defaults.router_aux_loss_coef);
  c.initializer_range = keys.Double("initializer_range", defaults.initializer_range);
  c.tie_word_embeddings = keys.Bool("tie_word_embeddings", defaults.tie_word_embeddings);
  const int64_t no_window = 0;
  c.sliding_window = keys.Int("sliding_window", &no_window);
  if (c.sliding_window < 0) keys.Fail("sliding_window", std::to_string(c.sliding_window) + " must be >= 1 or null");

  Validate(c, keys);
  // transformers' versions disagree on yarn's factor when the original
  // context is given (newer ones replace factor by max_position_embeddings /
  // original): accept only configs on which they agree.
  if (const RopeScaling& s = c.rope_scaling; s.type == "yarn" && s.original_max_position_embeddings > 0) {
    const double ratio = static_cast<double>(c.max_position_embeddings) / s.original_max_position_embeddings;
    if (std::abs(ratio - s.factor) > 1e-9 * ratio)
      keys.Fail("rope_scaling", "yarn factor " + std::to_string(s.factor) + " differs from max_position_embeddings / " +
                                    "original_max_position_embeddings = " + std::to_string(ratio) +
                                    " (transformers versions disagree on which applies)");
  }
  return c;
}

MixtralConfig ParseMixtralConfigText(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    // parse_error, and out_of_range for numbers beyond double (1e400).
    // nlohmann escapes control characters in what(), so this stays one line.
    throw Error(source + ": not valid JSON: " + e.what());
  }
  return ParseMixtralConfig(j, source);
}

MixtralConfig LoadMixtralConfig(const std::string& path) {
  return ParseMixtralConfigText(ReadFileBytes(path), path);
}

json MixtralConfigToJson(const MixtralConfig& c) {
  json j = {
      {"architectures", {"MixtralForCausalLM"}},
      {"model_type", "mixtral"},
      {"torch_dtype", "float32"},
      {"hidden_act", "silu"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_key_value_heads},
      {"num_local_experts", c.num_local_experts},
      {"num_experts_per_tok", c.num_experts_per_tok},
      {"max_position_embeddings", c.max_position_embeddings},
      {"rms_norm_eps", c.rms_norm_eps},
      {"rope_theta", c.rope_theta},
      {"router_aux_loss_coef", c.router_aux_loss_coef},
      {"initializer_range", c.initializer_range},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"sliding_window", c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr)},
      {"rope_scaling", RopeScalingToJson(c.rope_scaling)},
      {"attention_dropout", 0.0},
  };
  // Written only when explicit, so older transformers (which derive d / H
  // and ignore head_dim) and newer ones read the same model.
  if (c.head_dim > 0) j["head_dim"] = c.head_dim;
  return j;
}

json MixtralConfigToJsonKeeping(const MixtralConfig& config, const json& original, std::vector<std::string>* kept) {
  json out = MixtralConfigToJson(config);
  if (!original.is_object()) return out;
  for (const auto& [key, value] : original.items()) {
    if (out.contains(key)) continue;
    out[key] = value;
    if (kept) kept->push_back(key);
  }
  return out;
}

}  // namespace hetermoe::io
