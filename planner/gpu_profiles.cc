// The built-in GPU table and its lookups.
//
// Datasheet numbers are written with their source beside them. The
// efficiency factors (gemm_efficiency, attention_efficiency) are not from
// datasheets: they are calibrated so that the cost model (cost_model.h) on
// Mixtral-8x7B shapes reproduces the ratios HeterMoE measured (arXiv
// 2504.03871, see docs/algorithms.md):
//   - a V100 runs an expert at ~80% of an A40's speed (every sequence length);
//   - an A40 runs attention 3.7x faster than a V100 at 64K tokens (Volta has
//     no FlashAttention-2, so it falls back to a memory-efficient kernel);
//   - L40S vs T4: 7.0x on the expert MLP, 9.9x (4K) to 13.6x (64K) on attention.
// gpu_profiles_test checks these ratios, so a change to a number here that
// breaks them fails the build's tests. Kinds the paper did not measure (A10,
// A100, H100) use efficiencies typical of their kernel family:
// FlashAttention-2 reaches 50-70% of peak fwd+bwd on A100; FlashAttention-3
// reaches up to 75% of peak forward on H100 and less backward; large fp16
// GEMMs reach 55-65% of peak.
#include "planner/gpu_profiles.h"

#include <algorithm>
#include <cctype>
#include <cmath>

#include "common/error.h"

namespace hetermoe::planner {
namespace {

// Lower-case, and keep only letters and digits, so "NVIDIA-A100-SXM4-80GB",
// "nvidia a100 sxm4 80gb" and "A100_SXM4_80GB" compare equal.
std::string Normalize(std::string_view name) {
  std::string out;
  for (char c : name) {
    if (std::isalnum(static_cast<unsigned char>(c))) out.push_back(static_cast<char>(std::tolower(c)));
  }
  return out;
}

constexpr const char* kFlash2 = "flash-attention-2";
constexpr const char* kFlash3 = "flash-attention-3";  // Hopper: wgmma and TMA
constexpr const char* kMemEfficient = "memory-efficient";

std::vector<GpuProfile> BuiltinProfiles() {
  std::vector<GpuProfile> table;

  GpuProfile v100;
  v100.kind = "V100";
  v100.peak_fp16_tflops = 125;       // NVIDIA Tesla V100 datasheet: SXM2, tensor performance 125 TFLOPS
  v100.peak_bf16_tflops = 0;         // Volta has no bf16
  v100.memory_gib = 32;              // datasheet: 32 GB HBM2
  v100.memory_bandwidth_gbs = 900;   // datasheet: 900 GB/s
  v100.intra_node_gbs = 150;         // datasheet: NVLink 300 GB/s, both directions
  v100.intra_node_link = "NVLink 2.0";
  v100.attention_kernel = kMemEfficient;  // FlashAttention-2 needs Ampere or newer
  v100.gemm_efficiency = 0.52;                                // calibrated: 80% of A40 on experts
  v100.attention_efficiency = {{{4096, 0.17}, {65536, 0.148}}};  // calibrated: A40 3.7x at 64K
  v100.source = "NVIDIA Tesla V100 datasheet (SXM2 32GB); efficiencies calibrated to HeterMoE's A40/V100 ratios";
  table.push_back(v100);

  GpuProfile t4;
  t4.kind = "T4";
  t4.peak_fp16_tflops = 65;          // NVIDIA T4 datasheet: mixed precision FP16/FP32 65 TFLOPS
  t4.peak_bf16_tflops = 0;           // Turing has no bf16
  t4.memory_gib = 16;                // datasheet: 16 GB GDDR6
  t4.memory_bandwidth_gbs = 320;     // datasheet: 320+ GB/s
  t4.intra_node_gbs = 16;            // datasheet: PCIe Gen3 x16, 32 GB/s both directions
  t4.intra_node_link = "PCIe 3.0 x16";
  t4.attention_kernel = kMemEfficient;  // FlashAttention-2 needs Ampere or newer
  t4.gemm_efficiency = 0.383;                                 // calibrated: L40S 7.0x on the MLP (70 W power cap)
  t4.attention_efficiency = {{{4096, 0.130}, {65536, 0.187}}};  // calibrated: L40S 9.9x (4K) .. 13.6x (64K)
  t4.source = "NVIDIA T4 datasheet; efficiencies calibrated to HeterMoE's L40S/T4 ratios";
  table.push_back(t4);

  GpuProfile a10;
  a10.kind = "A10";
  a10.peak_fp16_tflops = 125;        // NVIDIA A10 datasheet: FP16 tensor core 125 TFLOPS (250 with sparsity)
  a10.peak_bf16_tflops = 125;        // datasheet: BF16 tensor core 125 TFLOPS (250 with sparsity)
  a10.memory_gib = 24;               // datasheet: 24 GB GDDR6
  a10.memory_bandwidth_gbs = 600;    // datasheet: 600 GB/s
  a10.intra_node_gbs = 32;           // datasheet: PCIe Gen4 64 GB/s both directions
  a10.intra_node_link = "PCIe 4.0 x16";
  a10.attention_kernel = kFlash2;
  a10.gemm_efficiency = 0.55;                                 // family-typical (Ampere GA102, as A40)
  a10.attention_efficiency = {{{4096, 0.42}, {65536, 0.50}}};   // family-typical (as A40)
  a10.source = "NVIDIA A10 datasheet; efficiencies as the A40 (same GA102 chip)";
  table.push_back(a10);

  GpuProfile a40;
  a40.kind = "A40";
  a40.peak_fp16_tflops = 149.7;      // NVIDIA A40 datasheet: BF16/FP16 tensor 149.7 TFLOPS (299.4 sparse)
  a40.peak_bf16_tflops = 149.7;      // datasheet: same as FP16
  a40.memory_gib = 48;               // datasheet: 48 GB GDDR6 with ECC
  a40.memory_bandwidth_gbs = 696;    // datasheet: 696 GB/s
  a40.intra_node_gbs = 32;           // datasheet: PCIe Gen4 64 GB/s both directions
  a40.intra_node_link = "PCIe 4.0 x16";
  a40.attention_kernel = kFlash2;
  a40.gemm_efficiency = 0.55;                                 // reference point of the V100 calibration
  a40.attention_efficiency = {{{4096, 0.42}, {65536, 0.50}}};   // FA2 on GA102, reference of the calibration
  a40.source = "NVIDIA A40 datasheet; efficiencies are the reference of the A40/V100 calibration";
  table.push_back(a40);

  GpuProfile a100_40;
  a100_40.kind = "A100-40GB";
  a100_40.peak_fp16_tflops = 312;      // NVIDIA A100 datasheet: BF16/FP16 tensor core 312 TFLOPS (624 sparse)
  a100_40.peak_bf16_tflops = 312;      // datasheet
  a100_40.memory_gib = 40;             // datasheet: 40 GB HBM2
  a100_40.memory_bandwidth_gbs = 1555; // datasheet: 1,555 GB/s
  a100_40.intra_node_gbs = 300;        // datasheet: NVLink 600 GB/s both directions (SXM4)
  a100_40.intra_node_link = "NVLink 3.0";
  a100_40.attention_kernel = kFlash2;
  a100_40.gemm_efficiency = 0.60;                                // family-typical
  a100_40.attention_efficiency = {{{4096, 0.50}, {65536, 0.60}}};  // FA2 paper: 50-70% of peak fwd+bwd
  a100_40.source = "NVIDIA A100 datasheet (SXM4 40GB); efficiencies family-typical";
  table.push_back(a100_40);

  GpuProfile a100_80 = a100_40;
  a100_80.kind = "A100-80GB";
  a100_80.memory_gib = 80;             // datasheet: 80 GB HBM2e
  a100_80.memory_bandwidth_gbs = 2039; // datasheet: 2,039 GB/s (SXM4)
  a100_80.source = "NVIDIA A100 datasheet (SXM4 80GB); efficiencies family-typical";
  table.push_back(a100_80);

  GpuProfile l40s;
  l40s.kind = "L40S";
  l40s.peak_fp16_tflops = 362.05;    // NVIDIA L40S datasheet: FP16/BF16 tensor 362.05 TFLOPS (733 sparse)
  l40s.peak_bf16_tflops = 362.05;    // datasheet
  l40s.memory_gib = 48;              // datasheet: 48 GB GDDR6 with ECC
  l40s.memory_bandwidth_gbs = 864;   // datasheet: 864 GB/s
  l40s.intra_node_gbs = 32;          // datasheet: PCIe Gen4 x16 64 GB/s both directions
  l40s.intra_node_link = "PCIe 4.0 x16";
  l40s.attention_kernel = kFlash2;
  l40s.gemm_efficiency = 0.50;                                 // reference point of the T4 calibration
  l40s.attention_efficiency = {{{4096, 0.45}, {65536, 0.50}}};   // reference point of the T4 calibration
  l40s.source = "NVIDIA L40S datasheet; efficiencies are the reference of the L40S/T4 calibration";
  table.push_back(l40s);

  GpuProfile h100;
  h100.kind = "H100";
  h100.peak_fp16_tflops = 989;       // NVIDIA H100 datasheet: SXM5 BF16/FP16 tensor 989 TFLOPS dense (1,979 sparse)
  h100.peak_bf16_tflops = 989;       // datasheet
  h100.memory_gib = 80;              // datasheet: 80 GB HBM3
  h100.memory_bandwidth_gbs = 3350;  // datasheet: 3.35 TB/s
  h100.intra_node_gbs = 450;         // datasheet: NVLink 900 GB/s both directions
  h100.intra_node_link = "NVLink 4.0";
  h100.attention_kernel = kFlash3;
  h100.gemm_efficiency = 0.55;                                 // family-typical
  h100.attention_efficiency = {{{4096, 0.50}, {65536, 0.62}}};   // FA3 paper: 75% of peak fwd, less bwd
  h100.source = "NVIDIA H100 datasheet (SXM5 80GB); efficiencies family-typical (FlashAttention-3)";
  table.push_back(h100);

  return table;
}

// Names as operators write them: node labels from NVIDIA's GPU feature
// discovery (nvidia.com/gpu.product) and common short forms.
const std::vector<std::pair<const char*, const char*>>& BuiltinAliases() {
  static const std::vector<std::pair<const char*, const char*>> aliases = {
      {"Tesla-V100-SXM2-32GB", "V100"}, {"V100-SXM2-32GB", "V100"}, {"Tesla-T4", "T4"},
      {"NVIDIA-A10", "A10"},            {"NVIDIA-A40", "A40"},      {"A100", "A100-80GB"},
      {"NVIDIA-A100-SXM4-40GB", "A100-40GB"}, {"NVIDIA-A100-SXM4-80GB", "A100-80GB"},
      {"NVIDIA-L40S", "L40S"},          {"H100-SXM", "H100"},       {"NVIDIA-H100-80GB-HBM3", "H100"},
  };
  return aliases;
}

}  // namespace

std::string_view PrecisionName(Precision precision) {
  return precision == Precision::kBf16 ? "bf16" : "fp16";
}

double EfficiencyCurve::At(int64_t seq_len) const {
  if (points.empty()) return 0;
  if (seq_len <= points.front().first) return points.front().second;
  if (seq_len >= points.back().first) return points.back().second;
  for (size_t i = 1; i < points.size(); ++i) {
    if (seq_len <= points[i].first) {
      const double x0 = std::log2(static_cast<double>(points[i - 1].first));
      const double x1 = std::log2(static_cast<double>(points[i].first));
      const double w = (std::log2(static_cast<double>(seq_len)) - x0) / (x1 - x0);
      return points[i - 1].second + w * (points[i].second - points[i - 1].second);
    }
  }
  return points.back().second;
}

double GpuProfile::PeakTflops(Precision precision) const {
  return precision == Precision::kBf16 ? peak_bf16_tflops : peak_fp16_tflops;
}

GpuProfileTable GpuProfileTable::Builtin() {
  GpuProfileTable table;
  for (GpuProfile& profile : BuiltinProfiles()) table.Put(std::move(profile));
  for (const auto& [alias, kind] : BuiltinAliases()) table.AddAlias(alias, kind);
  return table;
}

std::optional<std::string> GpuProfileTable::Canonical(std::string_view name) const {
  const auto it = aliases_.find(Normalize(name));
  if (it == aliases_.end()) return std::nullopt;
  return it->second;
}

const GpuProfile& GpuProfileTable::Find(std::string_view name) const {
  const std::optional<std::string> kind = Canonical(name);
  if (!kind) {
    std::string known;
    for (const std::string& k : Kinds()) known += (known.empty() ? "" : ", ") + k;
    throw Error("unknown GPU kind '" + std::string(name) + "' (known: " + known + ")");
  }
  return profiles_.at(*kind);
}

std::vector<std::string> GpuProfileTable::Kinds() const {
  std::vector<std::string> kinds;
  for (const auto& [kind, profile] : profiles_) kinds.push_back(kind);
  return kinds;
}

void GpuProfileTable::Put(GpuProfile profile) {
  aliases_[Normalize(profile.kind)] = profile.kind;
  std::string kind = profile.kind;
  profiles_[kind] = std::move(profile);
}

void GpuProfileTable::AddAlias(std::string alias, std::string kind) {
  aliases_[Normalize(alias)] = std::move(kind);
}

void GpuProfileTable::PutMeasured(MeasuredProfile measured) {
  std::string kind = measured.kind;
  measured_[kind].push_back(std::move(measured));
}

const std::vector<MeasuredProfile>& GpuProfileTable::Measured(std::string_view kind) const {
  static const std::vector<MeasuredProfile> kNone;
  const std::optional<std::string> canonical = Canonical(kind);
  if (!canonical) return kNone;
  const auto it = measured_.find(*canonical);
  return it == measured_.end() ? kNone : it->second;
}

Precision CommonPrecision(const std::vector<const GpuProfile*>& kinds) {
  for (const GpuProfile* profile : kinds) {
    if (!profile->SupportsBf16()) return Precision::kFp16;
  }
  return Precision::kBf16;
}

}  // namespace hetermoe::planner
