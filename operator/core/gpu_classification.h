// GPU classification: what GPU Feature Discovery's node labels say about a
// node, and the labels the node labeller keeps on it.
//
// Compute capability comes first (product strings vary by driver and MIG
// rewrites them); when it is missing the family label, then the product
// string decide; otherwise the generation is "unknown". The tier rule is
// configurable: a GPU whose compute capability reaches the threshold
// (default 8.0) is in the attention tier, every other GPU (older, unknown,
// or MIG-partitioned, whose slices are too small for attention) in the
// expert tier. Pure functions.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

namespace hetermoe::op {

using Labels = std::map<std::string, std::string>;

inline constexpr const char* kLabelGeneration = "hetermoe.io/gpu-generation";
inline constexpr const char* kLabelTier = "hetermoe.io/gpu-tier";
inline constexpr const char* kGfdProduct = "nvidia.com/gpu.product";
inline constexpr const char* kGfdFamily = "nvidia.com/gpu.family";
inline constexpr const char* kGfdComputeMajor = "nvidia.com/gpu.compute.major";
inline constexpr const char* kGfdComputeMinor = "nvidia.com/gpu.compute.minor";
inline constexpr const char* kGfdMemory = "nvidia.com/gpu.memory";
inline constexpr const char* kGfdCount = "nvidia.com/gpu.count";
inline constexpr const char* kGfdPresent = "nvidia.com/gpu.present";
inline constexpr const char* kGpuResource = "nvidia.com/gpu";

struct ComputeCapability {
  int major = 0, minor = 0;
  int Tenths() const { return major * 10 + minor; }  // 8.6 -> 86
  bool operator==(const ComputeCapability&) const = default;
};
// "8.6" -> {8, 6}; nullopt for anything else.
std::optional<ComputeCapability> ParseComputeCapability(const std::string& text);

struct GpuInfo {
  bool present = false;           // the node has NVIDIA GPUs at all
  std::string product;            // GFD product, "" if absent
  std::optional<ComputeCapability> compute;
  std::string generation = "unknown";  // volta|turing|ampere|ada|hopper|blackwell|unknown
  int64_t memory_mib = 0;
  int64_t count = 0;
  bool mig = false;               // MIG-partitioned (values rewritten by GFD)
};

GpuInfo ClassifyGpu(const Labels& labels);

struct TierRule {
  // GPUs with at least this compute capability (in tenths: 80 = 8.0) are
  // the attention tier.
  int attention_min_compute_tenths = 80;
};
// "attention" or "expert".
std::string TierOf(const GpuInfo& gpu, const TierRule& rule);

// The labeller's target: the two labels for a GPU node, none for others.
// Returns label -> value, where value nullopt means "remove if present".
std::map<std::string, std::optional<std::string>> DesiredNodeLabels(const Labels& labels, const TierRule& rule);

// The changes to make (same shape as above) given the node's current labels;
// empty when the node is already right.
std::map<std::string, std::optional<std::string>> NodeLabelChanges(const Labels& labels, const TierRule& rule);

}  // namespace hetermoe::op
