// The model's parameters as one flat fp32 buffer with named views.
//
// ParameterLayout fixes, for a MixtralConfig, the order, shape and offset of
// every tensor under its Hugging Face name (docs/model.md). One flat
// buffer makes the optimizer, the gradient norm, gradient all-reduce and
// checkpoints single loops over memory; the named views keep the safetensors
// files compatible with `transformers`.
#pragma once

#include <cstdint>
#include <climits>
#include <string>
#include <vector>

#include "common/mixtral_config.h"

namespace hetermoe::model {

struct TensorSlot {
  std::string name;            // Hugging Face name
  std::vector<int64_t> shape;
  int64_t offset = 0;          // in floats, into the flat buffer
  int64_t numel = 0;
  bool weight_decay = false;   // AdamW decays 2-D weights only (not RMSNorm)
};

struct ExpertOffsets {
  int64_t w1, w2, w3;
};

struct LayerOffsets {
  int64_t input_norm, q, k, v, o, post_norm, gate;
  std::vector<ExpertOffsets> experts;
};

class ParameterLayout {
 public:
  explicit ParameterLayout(const io::MixtralConfig& config);

  const std::vector<TensorSlot>& tensors() const { return tensors_; }
  int64_t total() const { return total_; }
  const TensorSlot* Find(const std::string& name) const;

  // The layout of the tensors with keep[i] (i indexes tensors()), packed into
  // a buffer of their own: what one rank of a distributed run stores. The
  // named offsets of the others become kAbsent, so code that reaches a
  // tensor the rank does not hold fails at once instead of reading another's.
  ParameterLayout Subset(const std::vector<bool>& keep) const;
  static constexpr int64_t kAbsent = INT64_MIN / 4;

  int64_t embed = 0, final_norm = 0, lm_head = 0;  // lm_head == embed when the config ties them
  std::vector<LayerOffsets> layers;

 private:
  int64_t Add(std::string name, std::vector<int64_t> shape, bool decay);
  std::vector<TensorSlot> tensors_;
  int64_t total_ = 0;
};

// Random initialisation as transformers does for Mixtral: normal(0,
// initializer_range) for every matrix, ones for RMSNorm weights. Seeded and
// deterministic across runs.
void InitParameters(const ParameterLayout& layout, double std_dev, uint64_t seed, float* params);
// The same values for the tensors of `into` (a Subset of `layout`), written
// into a buffer laid out by `into`: a rank initialises only what it holds.
void InitParameters(const ParameterLayout& layout, double std_dev, uint64_t seed, const ParameterLayout& into,
                    float* params);

// Loads every tensor of the layout from safetensors (F32/F16/BF16): one file,
// or Hugging Face shards (an index file, or a folder; io/safetensors_set.h),
// checking names and shapes; the error names the file and the tensor. The
// file may hold other tensors only with `others_allowed` (a Subset layout).
// Returns the bytes of tensor data read.
uint64_t LoadParameters(const ParameterLayout& layout, const std::string& path, float* params,
                        bool others_allowed = false);

// Writes the tensors of `buffer` (parameters, or optimizer moments laid out
// the same way) under the layout's names, each prefixed with `prefix`.
void SaveParameters(const ParameterLayout& layout, const std::string& path, const float* buffer,
                    const std::string& prefix = "");

}  // namespace hetermoe::model
