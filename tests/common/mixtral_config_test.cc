// Tests of common/mixtral_config: defaults, a real Mixtral config.json,
// the round trip through MixtralConfigToJson, and a table of invalid configs
// with the message each must produce.
#include "common/mixtral_config.h"

#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/test_util.h"

namespace hetermoe::io {
namespace {

using nlohmann::json;
using testing::ExpectError;
using testing::ScratchDir;

// A small valid config: d = 64, H = 4 (hd = 16), KV = 2, E = 4, top-2.
json TinyConfig() {
  return {{"vocab_size", 256},      {"hidden_size", 64},        {"intermediate_size", 128},
          {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
          {"num_local_experts", 4}, {"num_experts_per_tok", 2}};
}

TEST(MixtralConfigTest, RequiredKeysAndDefaults) {
  MixtralConfig c = ParseMixtralConfig(TinyConfig(), "config.json");
  EXPECT_EQ(c.vocab_size, 256);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 128);
  EXPECT_EQ(c.num_hidden_layers, 2);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.num_local_experts, 4);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.head_dim, 0);
  EXPECT_EQ(c.HeadDim(), 16);
  // transformers' MixtralConfig defaults.
  EXPECT_EQ(c.max_position_embeddings, 4096 * 32);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.router_aux_loss_coef, 0.001);
  EXPECT_EQ(c.initializer_range, 0.02);
  EXPECT_FALSE(c.tie_word_embeddings);
}

TEST(MixtralConfigTest, KeyValueHeadsDefaultToAttentionHeads) {
  json j = TinyConfig();
  j.erase("num_key_value_heads");
  EXPECT_EQ(ParseMixtralConfig(j, "c").num_key_value_heads, 4);
  j["num_key_value_heads"] = nullptr;
  EXPECT_EQ(ParseMixtralConfig(j, "c").num_key_value_heads, 4);
}

TEST(MixtralConfigTest, NullOptionalKeysTakeDefaultsAndUnknownKeysAreIgnored) {
  json j = TinyConfig();
  for (const char* key : {"head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta",
                          "router_aux_loss_coef", "initializer_range", "tie_word_embeddings",
                          "rope_scaling", "model_type", "hidden_act"}) {
    j[key] = nullptr;
  }
  j["some_future_key"] = {{"nested", {1, 2, 3}}};
  j["use_cache"] = true;
  MixtralConfig c = ParseMixtralConfig(j, "c");
  EXPECT_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.HeadDim(), 16);
}

TEST(MixtralConfigTest, ExplicitHeadDimNeedNotDivideHidden) {
  json j = TinyConfig();
  j["hidden_size"] = 60;  // 60 % 4 == 0 but hd is explicit anyway
  j["head_dim"] = 32;
  EXPECT_EQ(ParseMixtralConfig(j, "c").HeadDim(), 32);
  j["hidden_size"] = 62;  // not divisible by H: fine with head_dim
  EXPECT_EQ(ParseMixtralConfig(j, "c").HeadDim(), 32);
}

// mistralai/Mixtral-8x7B-v0.1's config.json.
TEST(MixtralConfigTest, ParsesMixtral8x7B) {
  const std::string text = R"({
    "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
    "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mixtral",
    "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "num_local_experts": 8, "output_router_logits": false,
    "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02,
    "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "transformers_version": "4.36.0.dev0", "use_cache": true, "vocab_size": 32000})";
  MixtralConfig c = ParseMixtralConfigText(text, "config.json");
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.HeadDim(), 128);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_EQ(c.router_aux_loss_coef, 0.02);
  EXPECT_EQ(c.rope_theta, 1e6);
}

TEST(MixtralConfigTest, ToJsonRoundTrips) {
  json j = TinyConfig();
  j["head_dim"] = 8;
  j["rms_norm_eps"] = 1e-6;
  j["rope_theta"] = 10000.0;
  j["router_aux_loss_coef"] = 0.02;
  j["max_position_embeddings"] = 512;
  const MixtralConfig c = ParseMixtralConfig(j, "c");
  const json out = MixtralConfigToJson(c);
  EXPECT_EQ(out["model_type"], "mixtral");
  EXPECT_EQ(out["architectures"], json::array({"MixtralForCausalLM"}));
  EXPECT_EQ(out["torch_dtype"], "float32");
  EXPECT_EQ(out["tie_word_embeddings"], false);
  // Through text, as a checkpoint would go.
  const MixtralConfig back = ParseMixtralConfigText(out.dump(2), "c");
  EXPECT_EQ(back.vocab_size, c.vocab_size);
  EXPECT_EQ(back.hidden_size, c.hidden_size);
  EXPECT_EQ(back.intermediate_size, c.intermediate_size);
  EXPECT_EQ(back.num_hidden_layers, c.num_hidden_layers);
  EXPECT_EQ(back.num_attention_heads, c.num_attention_heads);
  EXPECT_EQ(back.num_key_value_heads, c.num_key_value_heads);
  EXPECT_EQ(back.head_dim, 8);
  EXPECT_EQ(back.num_local_experts, c.num_local_experts);
  EXPECT_EQ(back.num_experts_per_tok, c.num_experts_per_tok);
  EXPECT_EQ(back.max_position_embeddings, 512);
  EXPECT_EQ(back.rms_norm_eps, 1e-6);
  EXPECT_EQ(back.rope_theta, 10000.0);
  EXPECT_EQ(back.router_aux_loss_coef, 0.02);
  EXPECT_EQ(back.initializer_range, c.initializer_range);
  // sliding_window as given (null when absent).
  EXPECT_TRUE(out["sliding_window"].is_null());
  j["sliding_window"] = 4096;
  const MixtralConfig windowed = ParseMixtralConfig(j, "c");
  EXPECT_EQ(MixtralConfigToJson(windowed)["sliding_window"], 4096);
  EXPECT_EQ(windowed.sliding_window, 4096);
  // rope_scaling: null when absent; as given otherwise, under both type keys.
  EXPECT_TRUE(out["rope_scaling"].is_null());
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  const json scaled = MixtralConfigToJson(ParseMixtralConfig(j, "c"));
  EXPECT_EQ(scaled["rope_scaling"]["rope_type"], "linear");
  EXPECT_EQ(scaled["rope_scaling"]["type"], "linear");
  EXPECT_EQ(scaled["rope_scaling"]["factor"], 2.0);
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 128},
                       {"beta_fast", 16.0}};
  const MixtralConfig yarn = ParseMixtralConfigText(MixtralConfigToJson(ParseMixtralConfig(j, "c")).dump(), "c");
  EXPECT_EQ(yarn.rope_scaling.type, "yarn");
  EXPECT_EQ(yarn.rope_scaling.factor, 4.0);
  EXPECT_EQ(yarn.rope_scaling.original_max_position_embeddings, 128);
  EXPECT_EQ(yarn.rope_scaling.beta_fast, 16.0);
  EXPECT_EQ(yarn.rope_scaling.beta_slow, 1.0);
  j["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_EQ(ParseMixtralConfig(j, "c").rope_scaling.type, "") << "default: no scaling";
  // head_dim 0 ("derive it") is not written.
  EXPECT_FALSE(MixtralConfigToJson(ParseMixtralConfig(TinyConfig(), "c")).contains("head_dim"));
}

TEST(MixtralConfigTest, LoadFromFile) {
  ScratchDir dir;
  const std::string path = dir.WriteFile("config.json", TinyConfig().dump());
  EXPECT_EQ(LoadMixtralConfig(path).hidden_size, 64);
  const std::string missing = dir.Path("missing.json");
  ExpectError([&] { LoadMixtralConfig(missing); }, missing, "cannot open: No such file or directory");
  const std::string bad = dir.WriteFile("bad.json", "{\"vocab_size\": 2,\n");
  ExpectError([&] { LoadMixtralConfig(bad); }, bad, "not valid JSON");
  const std::string kv = dir.WriteFile("kv.json", [] {
    json j = TinyConfig();
    j["num_key_value_heads"] = 3;
    return j.dump();
  }());
  ExpectError([&] { LoadMixtralConfig(kv); }, kv,
              "key \"num_key_value_heads\": 3 does not divide num_attention_heads 4");
}

TEST(MixtralConfigTest, TextErrors) {
  ExpectError([] { ParseMixtralConfigText("", "c.json"); }, "c.json", "not valid JSON");
  ExpectError([] { ParseMixtralConfigText("{\"a\":\n\x01}", "c.json"); }, "c.json", "not valid JSON");
  // nlohmann reports this as out_of_range, not parse_error (found by fuzz_corpus_test).
  ExpectError([] { ParseMixtralConfigText("{\"rope_theta\": 1e400}", "c.json"); }, "c.json",
              "not valid JSON: [json.exception.out_of_range.406] number overflow");
  ExpectError([] { ParseMixtralConfigText("[1]", "c.json"); }, "c.json", "config is not a JSON object but array");
}

// One invalid config: TinyConfig() with `key` set to `value` (JSON text) or
// removed when `value` is empty, and the message it must produce.
struct BadCase {
  const char* name;
  const char* key;
  const char* value;
  const char* needle;
};

const BadCase kBadCases[] = {
    {"MissingVocab", "vocab_size", "", "key \"vocab_size\": is required"},
    {"NullVocab", "vocab_size", "null", "key \"vocab_size\": is required"},
    {"MissingHidden", "hidden_size", "", "key \"hidden_size\": is required"},
    {"MissingIntermediate", "intermediate_size", "", "key \"intermediate_size\": is required"},
    {"MissingLayers", "num_hidden_layers", "", "key \"num_hidden_layers\": is required"},
    {"MissingHeads", "num_attention_heads", "", "key \"num_attention_heads\": is required"},
    {"MissingExperts", "num_local_experts", "", "key \"num_local_experts\": is required"},
    {"MissingTopK", "num_experts_per_tok", "", "key \"num_experts_per_tok\": is required"},
    {"StringInt", "hidden_size", "\"64\"", "key \"hidden_size\": expected an integer, got string \"64\""},
    {"FloatInt", "hidden_size", "64.0", "key \"hidden_size\": expected an integer, got 64.0"},
    {"BoolInt", "vocab_size", "true", "key \"vocab_size\": expected an integer, got true"},
    {"ArrayInt", "vocab_size", "[256]", "key \"vocab_size\": expected an integer, got array"},
    {"HugeInt", "vocab_size", "9223372036854775808", "key \"vocab_size\": 9223372036854775808 is out of range"},
    {"ZeroVocab", "vocab_size", "0", "key \"vocab_size\": 0 must be positive"},
    {"NegativeHidden", "hidden_size", "-64", "key \"hidden_size\": -64 must be positive"},
    {"ZeroIntermediate", "intermediate_size", "0", "key \"intermediate_size\": 0 must be positive"},
    {"ZeroLayers", "num_hidden_layers", "0", "key \"num_hidden_layers\": 0 must be positive"},
    {"ZeroHeads", "num_attention_heads", "0", "key \"num_attention_heads\": 0 must be positive"},
    {"ZeroKvHeads", "num_key_value_heads", "0", "key \"num_key_value_heads\": 0 must be positive"},
    {"ZeroExperts", "num_local_experts", "0", "key \"num_local_experts\": 0 must be positive"},
    {"ZeroTopK", "num_experts_per_tok", "0", "key \"num_experts_per_tok\": 0 must be positive"},
    {"ZeroMaxPositions", "max_position_embeddings", "0", "key \"max_position_embeddings\": 0 must be positive"},
    {"NegativeHeadDim", "head_dim", "-8", "key \"head_dim\": -8 must be positive"},
    {"KvDoesNotDivide", "num_key_value_heads", "3", "key \"num_key_value_heads\": 3 does not divide num_attention_heads 4"},
    {"KvAboveHeads", "num_key_value_heads", "8", "key \"num_key_value_heads\": 8 does not divide num_attention_heads 4"},
    {"HeadsDoNotDivideHidden", "num_attention_heads", "6",
     "key \"num_attention_heads\": 6 does not divide hidden_size 64 and head_dim is not given"},
    {"TopKAboveExperts", "num_experts_per_tok", "5", "key \"num_experts_per_tok\": 5 exceeds num_local_experts 4"},
    {"OddHeadDim", "head_dim", "7", "key \"head_dim\": head dimension 7 is odd; RoPE needs it even"},
    {"OddDerivedHeadDim", "hidden_size", "36", "key \"hidden_size\": head dimension 9 is odd"},
    {"ZeroEps", "rms_norm_eps", "0", "key \"rms_norm_eps\": 0.0 must be positive and finite"},
    {"NegativeTheta", "rope_theta", "-1.5", "key \"rope_theta\": -1.5 must be positive and finite"},
    {"StringTheta", "rope_theta", "\"1e6\"", "key \"rope_theta\": expected a number, got string \"1e6\""},
    {"NegativeAuxCoef", "router_aux_loss_coef", "-0.01", "key \"router_aux_loss_coef\": -0.01 must be non-negative"},
    {"NegativeInitRange", "initializer_range", "-1", "key \"initializer_range\": -1.0 must be non-negative"},
    {"TieNotBool", "tie_word_embeddings", "0", "key \"tie_word_embeddings\": expected true or false, got 0"},
    {"OtherModelType", "model_type", "\"llama\"", "key \"model_type\": \"llama\" is not \"mixtral\""},
    {"ModelTypeNotString", "model_type", "{}", "key \"model_type\": expected a string, got object"},
    {"OtherActivation", "hidden_act", "\"gelu\"", "key \"hidden_act\": \"gelu\" is not supported"},
    {"RopeScalingUnknownType", "rope_scaling", "{\"rope_type\":\"longrope\",\"factor\":2.0}",
     "key \"rope_scaling\": type \"longrope\" is not implemented (linear, dynamic and yarn are)"},
    {"RopeScalingNoType", "rope_scaling", "{\"factor\":2.0}", "key \"rope_scaling\": has no \"rope_type\""},
    {"RopeScalingNotObject", "rope_scaling", "2", "key \"rope_scaling\": expected an object or null, got 2"},
    {"RopeScalingUnsupportedKey", "rope_scaling", "{\"rope_type\":\"yarn\",\"factor\":2.0,\"mscale\":0.7}",
     "key \"rope_scaling\": key \"mscale\" is not supported with type \"yarn\""},
    {"RopeScalingLlama3", "rope_scaling", "{\"rope_type\":\"llama3\",\"factor\":8.0}", "type \"llama3\" is not implemented"},
    {"RopeScalingFactorBelowOne", "rope_scaling", "{\"type\":\"linear\",\"factor\":0.5}",
     "rope_scaling: key \"factor\": is required and must be at least 1"},
    {"YarnFactorDisagrees", "rope_scaling",
     "{\"rope_type\":\"yarn\",\"factor\":4.0,\"original_max_position_embeddings\":65536}",
     "key \"rope_scaling\": yarn factor 4.000000 differs from max_position_embeddings / original_max_position_embeddings"},
    {"NewlineInValueStaysOneLine", "hidden_act", "\"a\\nb\"", "key \"hidden_act\": \"a\\nb\" is not supported"},
    {"LongValueIsTruncated", "model_type", "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"",
     "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\" is not"},
    {"ParametersOverflow", "vocab_size", "4611686018427387904",
     "key \"hidden_size\": the model's parameter count overflows 64-bit integers"},
};

void PrintTo(const BadCase& c, std::ostream* os) { *os << c.name; }

class MixtralConfigBadTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(MixtralConfigBadTest, ThrowsNamingSourceKeyAndProblem) {
  const BadCase& c = GetParam();
  json j = TinyConfig();
  if (std::string(c.value).empty()) {
    j.erase(c.key);
  } else {
    j[c.key] = json::parse(c.value);
  }
  ExpectError([&] { ParseMixtralConfig(j, "model/config.json"); }, "model/config.json", c.needle);
  // The same through text, as LoadMixtralConfig reads it.
  ExpectError([&] { ParseMixtralConfigText(j.dump(), "model/config.json"); }, "model/config.json", c.needle);
}

INSTANTIATE_TEST_SUITE_P(Cases, MixtralConfigBadTest, ::testing::ValuesIn(kBadCases),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace hetermoe::io
