// GPU classification from GFD labels: see gpu_classification.h.
#include "operator/core/gpu_classification.h"

#include <algorithm>
#include <cctype>
#include <charconv>

namespace hetermoe::op {

namespace {

std::optional<int64_t> ParseInt(const std::string& text) {
  int64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return v;
}

const std::string* Find(const Labels& labels, const char* key) {
  auto it = labels.find(key);
  return it == labels.end() ? nullptr : &it->second;
}

std::string Upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

std::string GenerationFromCompute(ComputeCapability cc) {
  switch (cc.major) {
    case 7: return cc.minor >= 5 ? "turing" : "volta";
    case 8: return cc.minor == 9 ? "ada" : "ampere";
    case 9: return "hopper";
    case 10: case 11: case 12: return "blackwell";
    default: return "unknown";
  }
}

std::string GenerationFromFamily(const std::string& family) {
  static const std::map<std::string, std::string> kFamilies = {
      {"volta", "volta"}, {"turing", "turing"}, {"ampere", "ampere"},  {"ada-lovelace", "ada"},
      {"ada", "ada"},     {"hopper", "hopper"}, {"blackwell", "blackwell"}};
  auto it = kFamilies.find(family);
  return it == kFamilies.end() ? "unknown" : it->second;
}

// Last resort: well-known model numbers inside the product string.
std::string GenerationFromProduct(const std::string& product) {
  const std::string p = Upper(product);
  struct Hint { const char* token; const char* generation; };
  static const Hint kHints[] = {
      {"V100", "volta"}, {"TITAN-V", "volta"}, {"T4", "turing"},   {"RTX-20", "turing"},
      {"A100", "ampere"}, {"A40", "ampere"},   {"A30", "ampere"},  {"A10", "ampere"},
      {"A16", "ampere"},  {"RTX-A", "ampere"}, {"L40", "ada"},     {"L4", "ada"},
      {"RTX-40", "ada"},  {"H100", "hopper"},  {"H200", "hopper"}, {"H800", "hopper"},
      {"GH200", "hopper"}, {"B100", "blackwell"}, {"B200", "blackwell"}, {"GB200", "blackwell"}};
  for (const Hint& h : kHints) {
    // Match the token as a whole dash-separated word prefix ("NVIDIA-A40-..." but not "A400").
    size_t at = p.find(h.token);
    while (at != std::string::npos) {
      size_t end = at + std::char_traits<char>::length(h.token);
      bool starts = at == 0 || p[at - 1] == '-' || p[at - 1] == ' ';
      const char last = h.token[std::char_traits<char>::length(h.token) - 1];
      bool ends = end == p.size() || !std::isdigit(static_cast<unsigned char>(p[end])) ||
                  !std::isdigit(static_cast<unsigned char>(last));
      if (starts && ends) return h.generation;
      at = p.find(h.token, at + 1);
    }
  }
  return "unknown";
}

}  // namespace

std::optional<ComputeCapability> ParseComputeCapability(const std::string& text) {
  size_t dot = text.find('.');
  if (dot == std::string::npos) return std::nullopt;
  auto major = ParseInt(text.substr(0, dot));
  auto minor = ParseInt(text.substr(dot + 1));
  if (!major || !minor || *major < 0 || *minor < 0 || *minor > 9) return std::nullopt;
  return ComputeCapability{static_cast<int>(*major), static_cast<int>(*minor)};
}

GpuInfo ClassifyGpu(const Labels& labels) {
  GpuInfo gpu;
  if (const auto* p = Find(labels, kGfdProduct)) gpu.product = *p;
  if (const auto* c = Find(labels, kGfdCount)) gpu.count = ParseInt(*c).value_or(0);
  if (const auto* m = Find(labels, kGfdMemory)) gpu.memory_mib = ParseInt(*m).value_or(0);
  const auto* present = Find(labels, kGfdPresent);
  gpu.present = (present && *present == "true") || gpu.count > 0 || !gpu.product.empty();
  if (present && *present == "false") gpu.present = false;
  if (!gpu.present) return gpu;

  const auto* major = Find(labels, kGfdComputeMajor);
  const auto* minor = Find(labels, kGfdComputeMinor);
  if (major && minor) {
    auto ma = ParseInt(*major), mi = ParseInt(*minor);
    if (ma && mi && *ma > 0 && *mi >= 0 && *mi <= 9)
      gpu.compute = ComputeCapability{static_cast<int>(*ma), static_cast<int>(*mi)};
  }
  // GFD's MIG strategies: "single" rewrites the product ("...-MIG-1g.5gb"),
  // "mixed" exposes nvidia.com/mig-<profile>.count labels.
  gpu.mig = Upper(gpu.product).find("-MIG-") != std::string::npos;
  for (const auto& [key, value] : labels) {
    if (key.rfind("nvidia.com/mig-", 0) == 0 && key.size() > 6 && key.compare(key.size() - 6, 6, ".count") == 0 &&
        value != "0")
      gpu.mig = true;
  }

  if (gpu.compute) gpu.generation = GenerationFromCompute(*gpu.compute);
  if (gpu.generation == "unknown")
    if (const auto* f = Find(labels, kGfdFamily)) gpu.generation = GenerationFromFamily(*f);
  if (gpu.generation == "unknown") gpu.generation = GenerationFromProduct(gpu.product);
  return gpu;
}

std::string TierOf(const GpuInfo& gpu, const TierRule& rule) {
  if (gpu.mig || !gpu.compute) {
    // Without a compute capability the generation's lowest one stands in.
    if (gpu.mig) return "expert";
    static const std::map<std::string, int> kGenerationFloor = {
        {"volta", 70}, {"turing", 75}, {"ampere", 80}, {"ada", 89}, {"hopper", 90}, {"blackwell", 100}};
    auto it = kGenerationFloor.find(gpu.generation);
    if (it == kGenerationFloor.end()) return "expert";
    return it->second >= rule.attention_min_compute_tenths ? "attention" : "expert";
  }
  return gpu.compute->Tenths() >= rule.attention_min_compute_tenths ? "attention" : "expert";
}

std::map<std::string, std::optional<std::string>> DesiredNodeLabels(const Labels& labels, const TierRule& rule) {
  GpuInfo gpu = ClassifyGpu(labels);
  if (!gpu.present) return {{kLabelGeneration, std::nullopt}, {kLabelTier, std::nullopt}};
  return {{kLabelGeneration, gpu.generation}, {kLabelTier, TierOf(gpu, rule)}};
}

std::map<std::string, std::optional<std::string>> NodeLabelChanges(const Labels& labels, const TierRule& rule) {
  std::map<std::string, std::optional<std::string>> changes;
  for (const auto& [key, want] : DesiredNodeLabels(labels, rule)) {
    auto it = labels.find(key);
    if (want && (it == labels.end() || it->second != *want)) changes[key] = want;
    if (!want && it != labels.end()) changes[key] = std::nullopt;
  }
  return changes;
}

}  // namespace hetermoe::op
