// Fuzz target: ParseMixtralConfigText on arbitrary bytes; a config it accepts
// must survive MixtralConfigToJson -> text -> parse unchanged.

/* Build and run (clang, from the repository root; see CMakeLists.txt here):
  cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ \
        -DHETERMOE_BUILD_FUZZERS=ON -DHETERMOE_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo
  ninja -C build-fuzz config_fuzz
  mkdir -p /tmp/config-corpus && build-fuzz/tests/fuzz/config_fuzz \
      -dict=tests/fuzz/config.dict -max_total_time=60 \
      /tmp/config-corpus tests/fuzz/corpus/config
(libFuzzer adds new inputs to the first directory; the seeds stay as they are.)
*/
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/mixtral_config.h"
#include "tests/fuzz/fuzz_targets.h"

namespace hetermoe::fuzz {

void FuzzMixtralConfig(const uint8_t* data, size_t size) {
  using io::MixtralConfig;
  MixtralConfig config;
  try {
    config = io::ParseMixtralConfigText(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
  } catch (const hetermoe::Error&) {
    return;  // rejecting the input with a typed error is the expected outcome
  }
  // What the trainer writes into a checkpoint must read back as the same
  // model. Outside the try: an Error here is a bug too.
  const MixtralConfig back = io::ParseMixtralConfigText(io::MixtralConfigToJson(config).dump(), "round trip");
  const bool same =
      back.vocab_size == config.vocab_size && back.hidden_size == config.hidden_size &&
      back.intermediate_size == config.intermediate_size &&
      back.num_hidden_layers == config.num_hidden_layers &&
      back.num_attention_heads == config.num_attention_heads &&
      back.num_key_value_heads == config.num_key_value_heads && back.head_dim == config.head_dim &&
      back.num_local_experts == config.num_local_experts &&
      back.num_experts_per_tok == config.num_experts_per_tok &&
      back.max_position_embeddings == config.max_position_embeddings &&
      back.rms_norm_eps == config.rms_norm_eps && back.rope_theta == config.rope_theta &&
      back.router_aux_loss_coef == config.router_aux_loss_coef &&
      back.initializer_range == config.initializer_range &&
      back.tie_word_embeddings == config.tie_word_embeddings;
  if (!same) std::abort();
}

}  // namespace hetermoe::fuzz

#ifdef HETERMOE_LIBFUZZER
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  hetermoe::fuzz::FuzzMixtralConfig(data, size);
  return 0;
}
#endif
