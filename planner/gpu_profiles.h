// GPU profiles: what the planner knows about each GPU kind.
//
// A profile holds datasheet numbers (peak tensor-core TFLOP/s, memory,
// memory bandwidth, the intra-node link) and efficiency factors (what
// fraction of peak the expert GEMMs and the attention kernel reach). The
// built-in table covers V100, T4, A10, A40, A100 (40/80 GB), L40S and H100;
// a profiles YAML (profiles_yaml.h) overrides fields, adds kinds, and adds
// measured times from `hetermoe-trainer profile` (MeasuredProfile), which the
// cost model prefers over the table when they match the planned model.
//
// Everything here is plain data plus lookups; no I/O. A GpuProfileTable is a
// value: copy it, override it, pass it by const reference. Not thread-safe to
// mutate while others read it.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hetermoe::planner {

enum class Precision { kFp16, kBf16 };
std::string_view PrecisionName(Precision precision);

// Efficiency as a function of sequence length: points (seq_len, fraction of
// peak), interpolated linearly in log2(seq_len) and held flat beyond the ends.
struct EfficiencyCurve {
  std::vector<std::pair<int64_t, double>> points;  // sorted by seq_len, efficiency in (0, 1]

  double At(int64_t seq_len) const;
};

struct GpuProfile {
  std::string kind;                  // canonical name, e.g. "A40"
  double peak_fp16_tflops = 0;       // dense tensor-core peak, fp16 inputs
  double peak_bf16_tflops = 0;       // dense tensor-core peak, bf16 inputs; 0 = no bf16
  double memory_gib = 0;             // device memory
  double memory_bandwidth_gbs = 0;   // GB/s (1e9 bytes/s)
  std::string attention_kernel;      // kernel family: "flash-attention-2" or "-3", "memory-efficient"
  EfficiencyCurve attention_efficiency;  // core attention softmax(QK^T)V, fwd+bwd
  double gemm_efficiency = 0;        // expert FFN and projection GEMMs, fwd+bwd
  double intra_node_gbs = 0;         // per GPU, one direction, to a peer or the NIC
  std::string intra_node_link;       // e.g. "NVLink 2.0", "PCIe 4.0 x16"
  std::string source;                // where the numbers come from

  bool SupportsBf16() const { return peak_bf16_tflops > 0; }
  double PeakTflops(Precision precision) const;
};

// Times measured by `hetermoe-trainer profile` on one GPU of a kind, for one
// model shape and sequence length (see README.md, "Profiles YAML"). Zero or
// absent fields fall back to the table.
struct MeasuredProfile {
  std::string kind;
  // The model the measurement belongs to; used only to check it matches.
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t num_local_experts = 0;
  int64_t seq_len = 0;
  // Attention + gate of one layer on `attention_sequences` sequences.
  int64_t attention_sequences = 1;
  double attention_forward_seconds = 0;
  double attention_backward_seconds = 0;
  // One expert FFN on `expert_tokens` tokens.
  int64_t expert_tokens = 0;
  double expert_forward_seconds = 0;
  double expert_backward_seconds = 0;
  // Memory: one expert with its optimizer state, and the expert-less model
  // with its optimizer state.
  double expert_bytes = 0;
  double expertless_model_bytes = 0;
};

class GpuProfileTable {
 public:
  // The built-in table (datasheets + calibrated efficiencies).
  static GpuProfileTable Builtin();

  // Canonical kind for a name as an operator may write it ("a40",
  // "NVIDIA-A40", "Tesla-V100-SXM2-32GB"); nullopt if unknown.
  std::optional<std::string> Canonical(std::string_view name) const;
  // The profile of a kind; throws hetermoe::Error naming the known kinds.
  const GpuProfile& Find(std::string_view name) const;
  bool Contains(std::string_view name) const { return Canonical(name).has_value(); }
  std::vector<std::string> Kinds() const;

  // Adds a kind or replaces the profile of an existing one.
  void Put(GpuProfile profile);
  void AddAlias(std::string alias, std::string kind);
  void PutMeasured(MeasuredProfile measured);
  // Measurements for a kind (any model); empty if none.
  const std::vector<MeasuredProfile>& Measured(std::string_view kind) const;

 private:
  std::map<std::string, GpuProfile> profiles_;      // by canonical kind
  std::map<std::string, std::string> aliases_;      // normalized alias -> kind
  std::map<std::string, std::vector<MeasuredProfile>> measured_;
};

// The precision a plan trains in: bf16 when every kind it uses supports it,
// fp16 otherwise (tokens cross GPU kinds, so the run uses one format).
Precision CommonPrecision(const std::vector<const GpuProfile*>& kinds);

}  // namespace hetermoe::planner
