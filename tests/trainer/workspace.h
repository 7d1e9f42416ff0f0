// A throw-away training workspace for tests: a tiny Mixtral config, random
// token data and a run file in a fresh temporary folder, removed afterwards.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/mixtral_config.h"
#include "trainer/io/token_file.h"
#include "trainer/run/run_config.h"

namespace hetermoe::testing {

class Workspace {
 public:
  Workspace() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "hetermoe-test-XXXXXX").string();
    dir_ = ::mkdtemp(tmpl.data());
    config.vocab_size = 64;
    config.hidden_size = 16;
    config.intermediate_size = 24;
    config.num_hidden_layers = 2;
    config.num_attention_heads = 4;
    config.num_key_value_heads = 2;
    config.num_local_experts = 4;
    config.num_experts_per_tok = 2;
    config.max_position_embeddings = 64;
    config.rope_theta = 10000.0;
    config.router_aux_loss_coef = 0.02;
    config.initializer_range = 0.1;
    std::mt19937 rng(7);
    tokens.resize(2000);
    for (auto& t : tokens) t = rng() % config.vocab_size;
  }
  ~Workspace() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::string Path(const std::string& name) const { return (std::filesystem::path(dir_) / name).string(); }

  void WriteText(const std::string& name, const std::string& text) const {
    std::ofstream(Path(name), std::ios::binary) << text;
  }

  // Writes config.json, tokens.bin and run.yaml; returns the run file's path.
  std::string WriteRun(const std::string& extra_train = "", const std::string& extra_output = "") {
    WriteText("config.json", io::MixtralConfigToJson(config).dump(2));
    io::WriteTokenFile(Path("tokens.bin"), tokens);
    WriteText("run.yaml",
              "model: {config: config.json}\n"
              "data: {train: tokens.bin}\n"
              "train:\n  steps: 4\n  global_batch: 4\n  micro_batches: 2\n  seq_len: 16\n"
              "  lr: 1.0e-2\n  schedule: cosine\n  warmup_steps: 1\n  min_lr: 1.0e-3\n"
              "  grad_clip: 1.0\n  threads: 2\n" + extra_train +
              "output:\n  dir: out\n" + extra_output);
    return Path("run.yaml");
  }

  io::MixtralConfig config;
  std::vector<uint32_t> tokens;

 private:
  std::string dir_;
};

}  // namespace hetermoe::testing
