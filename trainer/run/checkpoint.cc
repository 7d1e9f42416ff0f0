#include "trainer/run/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "trainer/io/safetensors.h"

namespace hetermoe::run {
namespace {

namespace fs = std::filesystem;

void WriteTextFile(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.flush();
  if (!out) throw Error(path.string() + ": cannot write");
  out.close();
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

void FsyncDir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

nlohmann::json ReadJson(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string() + ": cannot open");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + ": malformed JSON: " + e.what());
  }
}

}  // namespace

void WriteCheckpoint(const std::string& dir_str, const CheckpointView& v) {
  const fs::path dir = fs::path(dir_str);
  const fs::path parent = dir.parent_path().empty() ? fs::path(".") : dir.parent_path();
  const fs::path tmp = parent / ("." + dir.filename().string() + ".tmp-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::remove_all(tmp, ec);
  if (!fs::create_directories(tmp, ec) && ec)
    throw Error(tmp.string() + ": cannot create checkpoint folder: " + ec.message());

  WriteTextFile(tmp / "config.json",
                (v.config_json ? *v.config_json : io::MixtralConfigToJson(*v.config)).dump(2) + "\n");
  for (const auto& file : v.extra_files) {
    fs::copy_file(file.path, tmp / file.name, fs::copy_options::overwrite_existing, ec);
    if (ec) throw Error(file.path + ": cannot copy into the checkpoint: " + ec.message());
  }
  const auto& ts = v.layout->tensors();
  auto tensor = [&](std::string name, size_t i, StateBuffer b, const float* buffer,
                    io::DType dtype = io::DType::kF32) {
    if (buffer) return io::TensorToWrite{std::move(name), ts[i].shape, buffer + ts[i].offset, {}, dtype};
    return io::TensorToWrite{std::move(name), ts[i].shape, nullptr,
                             [&v, i, b](int64_t first, int64_t count, float* out) { v.source(i, b, first, count, out); },
                             dtype};
  };
  const bool bf16 = v.weights_dtype == io::DType::kBF16;
  const int64_t element_bytes = bf16 ? 2 : 4;
  if (!v.params && !v.source) throw Error(dir_str + ": a checkpoint needs the model's tensors");
  {
    // Shards: tensors in layout order, a new shard when the next would pass the limit.
    std::vector<std::vector<size_t>> shards(1);
    int64_t in_shard = 0;
    for (size_t i = 0; i < ts.size(); ++i) {
      const int64_t bytes = ts[i].numel * element_bytes;
      if (v.max_shard_bytes > 0 && in_shard > 0 && in_shard + bytes > v.max_shard_bytes) {
        shards.emplace_back();
        in_shard = 0;
      }
      shards.back().push_back(i);
      in_shard += bytes;
    }
    nlohmann::json weight_map = nlohmann::json::object();
    int64_t total = 0;
    for (size_t s = 0; s < shards.size(); ++s) {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
      const std::string file = v.max_shard_bytes == 0 ? "model.safetensors" : name;
      std::vector<io::TensorToWrite> params;
      for (size_t i : shards[s]) {
        params.push_back(tensor(ts[i].name, i, StateBuffer::kParams, v.params, v.weights_dtype));
        weight_map[ts[i].name] = file;
        total += ts[i].numel * element_bytes;
      }
      io::WriteSafetensors((tmp / file).string(), params, {{"format", "pt"}});
    }
    if (v.max_shard_bytes > 0) {
      const nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
      WriteTextFile(tmp / "model.safetensors.index.json", index.dump(2) + "\n");
    }
  }
  {
    std::vector<io::TensorToWrite> moments;
    for (size_t i = 0; i < ts.size(); ++i) {
      moments.push_back(tensor("exp_avg." + ts[i].name, i, StateBuffer::kExpAvg, v.exp_avg));
      moments.push_back(tensor("exp_avg_sq." + ts[i].name, i, StateBuffer::kExpAvgSq, v.exp_avg_sq));
      if (bf16) moments.push_back(tensor("master." + ts[i].name, i, StateBuffer::kParams, v.params));
    }
    io::WriteSafetensors((tmp / "optimizer.safetensors").string(), moments,
                         {{"optimizer", "adamw"}, {"step", std::to_string(v.state.step)}});
  }
  nlohmann::json state = {{"format", "hetermoe-trainer-state/1"},
                          {"step", v.state.step},
                          {"data_position", v.state.data_position},
                          {"data_epoch", v.state.data_epoch},
                          {"tokens_seen", v.state.tokens_seen}};
  if (!v.state.expert_placement.empty()) {
    state["expert_placement"] = v.state.expert_placement;
    state["expert_swaps"] = v.state.expert_swaps;
  }
  WriteTextFile(tmp / "trainer_state.json", state.dump(2) + "\n");
  FsyncDir(tmp);

  // Replace: move any old folder aside, rename the new one in, then delete.
  const fs::path old = parent / ("." + dir.filename().string() + ".old-" + std::to_string(::getpid()));
  if (fs::exists(dir)) {
    fs::rename(dir, old, ec);
    if (ec) throw Error(dir.string() + ": cannot replace checkpoint: " + ec.message());
  }
  fs::rename(tmp, dir, ec);
  if (ec) throw Error(dir.string() + ": cannot move checkpoint into place: " + ec.message());
  FsyncDir(parent);
  fs::remove_all(old, ec);
}

LoadedCheckpoint ReadCheckpoint(const std::string& dir_str, const io::MixtralConfig& config,
                                const model::ParameterLayout& layout, float* params,
                                float* exp_avg, float* exp_avg_sq, const model::ParameterLayout* into) {
  const fs::path dir(dir_str);
  if (!fs::is_directory(dir)) throw Error(dir_str + ": checkpoint folder does not exist");
  const io::MixtralConfig saved = io::LoadMixtralConfig((dir / "config.json").string());
  const model::ParameterLayout saved_layout(saved);
  if (saved_layout.total() != layout.total() || saved.num_hidden_layers != config.num_hidden_layers ||
      saved.num_local_experts != config.num_local_experts ||
      saved.hidden_size != config.hidden_size || saved.vocab_size != config.vocab_size ||
      saved.num_attention_heads != config.num_attention_heads ||
      saved.num_key_value_heads != config.num_key_value_heads)
    throw Error(dir_str + "/config.json: the checkpoint's model differs from the run's model");
  const model::ParameterLayout& held = into ? *into : layout;
  // The folder: one model.safetensors, or shards with their index.
  uint64_t bytes_read = model::LoadParameters(held, dir.string(), params, into != nullptr);
  const io::SafetensorsFile opt = io::SafetensorsFile::Load((dir / "optimizer.safetensors").string());
  for (const auto& t : held.tensors()) {
    opt.ReadInto("exp_avg." + t.name, t.shape, exp_avg + t.offset);
    opt.ReadInto("exp_avg_sq." + t.name, t.shape, exp_avg_sq + t.offset);
    // A checkpoint exported in bf16 keeps the fp32 master weights here.
    if (opt.Find("master." + t.name) != nullptr) opt.ReadInto("master." + t.name, t.shape, params + t.offset);
  }
  bytes_read += opt.bytes_read();
  const fs::path state_path = dir / "trainer_state.json";
  const nlohmann::json s = ReadJson(state_path);
  LoadedCheckpoint out;
  out.bytes_read = bytes_read;
  try {
    out.state.step = s.at("step").get<int64_t>();
    out.state.data_position = s.at("data_position").get<int64_t>();
    out.state.tokens_seen = s.value("tokens_seen", int64_t{0});
    out.state.data_epoch = s.value("data_epoch", int64_t{0});
    if (s.contains("expert_placement")) {
      out.state.expert_placement = s.at("expert_placement").get<std::vector<std::vector<int>>>();
      out.state.expert_swaps = s.value("expert_swaps", int64_t{0});
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(state_path.string() + ": " + e.what());
  }
  if (out.state.step < 0 || out.state.data_position < 0 || out.state.data_epoch < 0)
    throw Error(state_path.string() + ": negative step, data_position or data_epoch");
  if (!out.state.expert_placement.empty()) {  // a permutation of the experts per layer
    bool ok = static_cast<int64_t>(out.state.expert_placement.size()) == config.num_hidden_layers;
    for (const auto& layer : out.state.expert_placement) {
      std::vector<bool> seen(config.num_local_experts, false);
      ok = ok && static_cast<int64_t>(layer.size()) == config.num_local_experts;
      for (int e : layer) {
        ok = ok && e >= 0 && e < config.num_local_experts && !seen[e];
        if (ok) seen[e] = true;
      }
    }
    if (!ok)
      throw Error(state_path.string() + ": expert_placement is not a permutation of the " +
                  std::to_string(config.num_local_experts) + " experts for each of the " +
                  std::to_string(config.num_hidden_layers) + " layers");
  }
  return out;
}

std::string FindLatestCheckpoint(const std::string& output_dir) {
  std::error_code ec;
  if (!fs::is_directory(output_dir, ec)) return "";
  std::string best;
  int64_t best_step = -1;
  for (const auto& entry : fs::directory_iterator(output_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name != "final" && name.rfind("checkpoint-", 0) != 0) continue;
    const fs::path state = entry.path() / "trainer_state.json";
    if (!fs::exists(state)) continue;
    try {
      const int64_t step = ReadJson(state).at("step").get<int64_t>();
      if (step > best_step) {
        best_step = step;
        best = entry.path().string();
      }
    } catch (const std::exception&) {
      continue;  // an unreadable folder is not a resume candidate
    }
  }
  return best;
}

}  // namespace hetermoe::run
