// Checkpoints: a folder that `transformers` can load (config.json +
// model.safetensors with Hugging Face names) plus what resuming needs
// (optimizer.safetensors with the AdamW moments, trainer_state.json with the
// step and the data position).
//
// Writes are atomic: everything goes into a hidden temporary folder beside
// the target, each file is fsync'ed, then the folder is renamed into place.
// A crash mid-write leaves the previous checkpoint intact.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/mixtral_config.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/parameters.h"

namespace hetermoe::run {

struct TrainerState {
  int64_t step = 0;            // optimizer steps taken
  int64_t data_position = 0;   // the batches' position for the next step (data/batches.h)
  int64_t data_epoch = 0;      // data.shuffle: the epoch being read
  int64_t tokens_seen = 0;
  // HierMoE expert swap: [layer][slot] the expert (original index) each slot
  // held, empty when every expert sits in its planned slot; and the swaps
  // made. A resumed run puts the experts back there (the weights in the
  // files keep the original indices).
  std::vector<std::vector<int>> expert_placement;
  int64_t expert_swaps = 0;
};

// Which buffer a tensor comes from.
enum class StateBuffer { kParams = 0, kExpAvg = 1, kExpAvgSq = 2 };
// Fills `out` with tensor `tensor` (an index into layout.tensors()) of one
// buffer; a distributed run fetches it from the rank that holds it.
using TensorSource = std::function<void(size_t tensor, StateBuffer buffer, int64_t first, int64_t count, float* out)>;

struct CheckpointView {
  const io::MixtralConfig* config;
  const model::ParameterLayout* layout;
  const float* params;      // whole-model buffers, or null with `source`
  const float* exp_avg;
  const float* exp_avg_sq;
  TrainerState state;
  TensorSource source;      // used when the buffers are null: one tensor at a time
  // Model weights in shards of at most this many bytes (a tensor larger than
  // that gets a shard of its own) plus model.safetensors.index.json, as
  // Hugging Face writes them; 0 = one model.safetensors.
  int64_t max_shard_bytes = 0;
  // The weights' dtype on disk (output.dtype). With BF16 the fp32 master
  // weights go into optimizer.safetensors as master.<name>, so resume stays exact.
  io::DType weights_dtype = io::DType::kF32;
  // config.json as written (MixtralConfigToJsonKeeping); null = MixtralConfigToJson(*config).
  const nlohmann::json* config_json = nullptr;
  // Files copied beside the weights (generation_config.json, tokenizer
  // files), under the name given.
  struct ExtraFile {
    std::string path, name;
  };
  std::vector<ExtraFile> extra_files;
};

// Writes `dir` atomically (replacing an existing folder of that name).
void WriteCheckpoint(const std::string& dir, const CheckpointView& view);

struct LoadedCheckpoint {
  TrainerState state;
  uint64_t bytes_read = 0;  // tensor data read (parameters and moments)
};
// Loads params and moments (buffers sized layout.total()) from `dir`,
// checking that its config matches `config` in every shape. With `into` (a
// Subset of `layout`), loads only its tensors, into buffers laid out by it.
LoadedCheckpoint ReadCheckpoint(const std::string& dir, const io::MixtralConfig& config,
                                const model::ParameterLayout& layout, float* params,
                                float* exp_avg, float* exp_avg_sq,
                                const model::ParameterLayout* into = nullptr);

// The newest checkpoint-<step>/ or final/ under output_dir by step; "" if none.
std::string FindLatestCheckpoint(const std::string& output_dir);

}  // namespace hetermoe::run
