// Reader for the profiles YAML (format in profiles_yaml.h).
#include "planner/profiles_yaml.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "common/yaml_fields.h"

namespace hetermoe::planner {
namespace {

namespace yf = yaml_fields;

double Positive(const YAML::Node& map, const char* key, const yf::Where& where, double current) {
  const auto value = yf::OptionalDouble(map, key, where);
  if (!value) return current;
  if (!(*value > 0)) where.Key(key).Fail("must be positive");
  return *value;
}

double Fraction(const YAML::Node& map, const char* key, const yf::Where& where, double current) {
  const auto value = yf::OptionalDouble(map, key, where);
  if (!value) return current;
  if (!(*value > 0 && *value <= 1)) where.Key(key).Fail("must be a fraction of peak in (0, 1]");
  return *value;
}

// Both passes of a measured op; each must be given and positive.
void ReadPassSeconds(const YAML::Node& map, const yf::Where& where, double& forward, double& backward) {
  forward = Positive(map, "forward_seconds", where, 0);
  backward = Positive(map, "backward_seconds", where, 0);
  if (forward <= 0 || backward <= 0) where.Fail("needs forward_seconds and backward_seconds");
}

EfficiencyCurve ReadCurve(const YAML::Node& node, const yf::Where& where) {
  yf::RequireMap(node, where);
  EfficiencyCurve curve;
  for (const auto& entry : node) {
    long long seq_len = 0;
    double efficiency = 0;
    try {
      seq_len = entry.first.as<long long>();
      efficiency = entry.second.as<double>();
    } catch (const YAML::Exception&) {
      where.Fail("expected sequence length: efficiency pairs, e.g. {4096: 0.45, 65536: 0.5}");
    }
    if (seq_len < 1) where.Fail("sequence lengths must be positive");
    if (!(efficiency > 0 && efficiency <= 1)) where.Fail("efficiencies must be fractions of peak in (0, 1]");
    curve.points.push_back({seq_len, efficiency});
  }
  if (curve.points.empty()) where.Fail("needs at least one point");
  std::sort(curve.points.begin(), curve.points.end());
  return curve;
}

void ReadGpu(const YAML::Node& entry, const yf::Where& where, GpuProfileTable& table) {
  yf::RequireMap(entry, where);
  yf::CheckKeys(entry,
                {"kind", "base", "aliases", "peak_fp16_tflops", "peak_bf16_tflops", "memory_gib",
                 "memory_bandwidth_gbs", "gemm_efficiency", "attention_kernel", "attention_efficiency",
                 "intra_node_gbs", "intra_node_link", "source"},
                where);
  const std::string kind = yf::RequiredString(entry, "kind", where);
  const auto base = yf::OptionalString(entry, "base", where);

  GpuProfile profile;
  const auto existing = table.Canonical(kind);
  if (base) {
    if (!table.Contains(*base)) where.Key("base").Fail("unknown GPU kind '" + *base + "'");
    profile = table.Find(*base);
    profile.kind = kind;
    profile.source = "based on " + table.Find(*base).kind;
  } else if (existing) {
    profile = table.Find(kind);
  } else {
    profile.kind = kind;
    profile.source = "profiles YAML";
    for (const char* key : {"peak_fp16_tflops", "memory_gib", "memory_bandwidth_gbs", "gemm_efficiency",
                            "attention_efficiency", "intra_node_gbs"}) {
      if (!entry[key]) where.Key(key).Fail("missing (a new GPU kind needs it, or a 'base' kind to copy)");
    }
  }

  profile.peak_fp16_tflops = Positive(entry, "peak_fp16_tflops", where, profile.peak_fp16_tflops);
  if (const auto bf16 = yf::OptionalDouble(entry, "peak_bf16_tflops", where)) {
    if (*bf16 < 0) where.Key("peak_bf16_tflops").Fail("must not be negative (0 = no bf16)");
    profile.peak_bf16_tflops = *bf16;
  }
  profile.memory_gib = Positive(entry, "memory_gib", where, profile.memory_gib);
  profile.memory_bandwidth_gbs = Positive(entry, "memory_bandwidth_gbs", where, profile.memory_bandwidth_gbs);
  profile.gemm_efficiency = Fraction(entry, "gemm_efficiency", where, profile.gemm_efficiency);
  profile.intra_node_gbs = Positive(entry, "intra_node_gbs", where, profile.intra_node_gbs);
  if (const YAML::Node curve = entry["attention_efficiency"]) {
    profile.attention_efficiency = ReadCurve(curve, where.Key("attention_efficiency"));
  }
  profile.attention_kernel = yf::OptionalString(entry, "attention_kernel", where).value_or(profile.attention_kernel);
  profile.intra_node_link = yf::OptionalString(entry, "intra_node_link", where).value_or(profile.intra_node_link);
  profile.source = yf::OptionalString(entry, "source", where).value_or(profile.source);
  const std::string canonical = existing && !base ? *existing : kind;
  profile.kind = canonical;
  table.Put(profile);

  if (const YAML::Node aliases = entry["aliases"]) {
    yf::RequireSequence(aliases, where.Key("aliases"));
    for (size_t i = 0; i < aliases.size(); ++i) {
      if (!aliases[i].IsScalar()) where.Key("aliases").Index(i).Fail("expected a string");
      table.AddAlias(aliases[i].Scalar(), canonical);
    }
  }
}

void ReadMeasured(const YAML::Node& entry, const yf::Where& where, GpuProfileTable& table) {
  yf::RequireMap(entry, where);
  yf::CheckKeys(entry, {"gpu", "model", "seq_len", "attention", "expert", "memory"}, where);
  MeasuredProfile m;
  const std::string gpu = yf::RequiredString(entry, "gpu", where);
  const auto kind = table.Canonical(gpu);
  if (!kind) where.Key("gpu").Fail("unknown GPU kind '" + gpu + "' (define it under 'gpus' first)");
  m.kind = *kind;

  const YAML::Node model = entry["model"];
  const yf::Where model_where = where.Key("model");
  if (!model) model_where.Fail("missing (the measurement must name the model it was taken on)");
  yf::RequireMap(model, model_where);
  yf::CheckKeys(model,
                {"hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_local_experts"},
                model_where);
  m.hidden_size = yf::RequiredInt(model, "hidden_size", model_where);
  m.intermediate_size = yf::RequiredInt(model, "intermediate_size", model_where);
  m.num_attention_heads = yf::RequiredInt(model, "num_attention_heads", model_where);
  m.num_key_value_heads = yf::RequiredInt(model, "num_key_value_heads", model_where);
  m.num_local_experts = yf::RequiredInt(model, "num_local_experts", model_where);

  m.seq_len = yf::OptionalInt(entry, "seq_len", where).value_or(0);
  if (const YAML::Node attention = entry["attention"]) {
    const yf::Where w = where.Key("attention");
    yf::RequireMap(attention, w);
    yf::CheckKeys(attention, {"sequences", "forward_seconds", "backward_seconds"}, w);
    if (m.seq_len < 1) where.Key("seq_len").Fail("needed with an attention measurement");
    m.attention_sequences = yf::OptionalInt(attention, "sequences", w).value_or(1);
    if (m.attention_sequences < 1) w.Key("sequences").Fail("must be positive");
    ReadPassSeconds(attention, w, m.attention_forward_seconds, m.attention_backward_seconds);
  }
  if (const YAML::Node expert = entry["expert"]) {
    const yf::Where w = where.Key("expert");
    yf::RequireMap(expert, w);
    yf::CheckKeys(expert, {"tokens", "forward_seconds", "backward_seconds"}, w);
    m.expert_tokens = yf::RequiredInt(expert, "tokens", w);
    if (m.expert_tokens < 1) w.Key("tokens").Fail("must be positive");
    ReadPassSeconds(expert, w, m.expert_forward_seconds, m.expert_backward_seconds);
  }
  if (const YAML::Node memory = entry["memory"]) {
    const yf::Where w = where.Key("memory");
    yf::RequireMap(memory, w);
    yf::CheckKeys(memory, {"expert_bytes", "expertless_model_bytes"}, w);
    m.expert_bytes = Positive(memory, "expert_bytes", w, 0);
    m.expertless_model_bytes = Positive(memory, "expertless_model_bytes", w, 0);
  }
  table.PutMeasured(std::move(m));
}

}  // namespace

void ApplyProfilesYaml(const std::string& text, const std::string& source, GpuProfileTable& table) {
  const yf::Where root{source, ""};
  const YAML::Node doc = yf::ParseDocument(text, source);
  if (!doc || doc.IsNull()) return;  // an empty file overrides nothing
  yf::RequireMap(doc, root);
  yf::CheckKeys(doc, {"gpus", "measured"}, root);
  if (const YAML::Node gpus = doc["gpus"]) {
    yf::RequireSequence(gpus, root.Key("gpus"));
    for (size_t i = 0; i < gpus.size(); ++i) ReadGpu(gpus[i], root.Key("gpus").Index(i), table);
  }
  if (const YAML::Node measured = doc["measured"]) {
    yf::RequireSequence(measured, root.Key("measured"));
    for (size_t i = 0; i < measured.size(); ++i) ReadMeasured(measured[i], root.Key("measured").Index(i), table);
  }
}

void LoadProfiles(const std::string& path, GpuProfileTable& table) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot open profiles");
  std::stringstream text;
  text << in.rdbuf();
  ApplyProfilesYaml(text.str(), path, table);
}

}  // namespace hetermoe::planner
