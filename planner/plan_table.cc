// Plan -> text report.
#include "planner/plan_table.h"

#include <cstdio>
#include <sstream>
#include <utility>

namespace hetermoe::planner {
namespace {

constexpr size_t kGroupsShown = 4;

std::string Format(const char* fmt, double value) {
  char text[64];
  std::snprintf(text, sizeof(text), fmt, value);
  return text;
}

std::string Slots(const std::vector<GpuSlot>& slots) {
  std::string out;
  for (const GpuSlot& s : slots) out += (out.empty() ? "" : " ") + s.node + ":" + std::to_string(s.gpu_index);
  return out;
}

std::string Join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& s : items) out += (out.empty() ? "" : ", ") + s;
  return out;
}

// Bytes an attention and an expert rank hold under the shape's offload.
std::pair<double, double> RankBytes(const GroupShape& s, const ZpMemory& m) {
  double moved = 0;
  for (int o : s.offloaded) moved += o;
  const double on_attention = moved / s.attention_ranks;
  const double on_expert = m.experts_per_expert_rank - moved / s.expert_ranks;
  return {m.attention_base + on_attention * m.expert_on_attention_rank,
          m.expert_base + on_expert * m.expert_on_expert_rank};
}

std::string ExplainRow(const char* mark, const Plan& plan, const GroupShape& s, double step, double a_busy,
                       double e_busy, const ZpMemory& m) {
  const auto [a_bytes, e_bytes] = RankBytes(s, m);
  double moved = 0;
  for (int o : s.offloaded) moved += o;
  char line[256];
  std::snprintf(line, sizeof(line), "%-2s %-28s %4d %4d %6.0f %9.3f %10.0f %4.0f%%/%3.0f%%  %s / %s\n", mark,
                ShapeText(s).c_str(), s.sequences_per_attention_rank, s.micro_batches, moved, step,
                static_cast<double>(plan.global_batch * plan.seq_len) / step, 100 * a_busy, 100 * e_busy,
                (GiB(a_bytes) + " of " + GiB(m.attention_usable)).c_str(),
                (GiB(e_bytes) + " of " + GiB(m.expert_usable)).c_str());
  return line;
}

}  // namespace

std::string PlanExplanation(const Plan& plan) {
  std::ostringstream out;
  out << "search: " << plan.shapes_enumerated << " group shapes enumerated, " << plan.shapes_priced
      << " priced (the others' lower bound was slower than the plan)\n\n";
  char header[256];
  std::snprintf(header, sizeof(header), "%-2s %-28s %4s %4s %6s %9s %10s %10s  %s\n", "", "shape", "S", "R",
                "moved", "step (s)", "tokens/s", "busy A/E", "memory per attention / expert rank");
  out << header;
  for (const GroupClass& c : plan.classes) {
    out << ExplainRow("*", plan, c.shape, c.step_seconds, c.attention_busy, c.expert_busy, c.memory);
  }
  for (const GroupEvaluation& e : plan.alternatives) {
    out << ExplainRow("", plan, e.shape, e.step_seconds, e.attention_busy, e.expert_busy, e.memory);
  }
  out << "(* the plan; S sequences per attention rank, R micro-batches, moved: experts Asym-EA moves in all)\n";
  if (!plan.refused.empty()) {
    out << "\ndid not fit (most promising first):\n";
    for (const RefusedShape& r : plan.refused) {
      out << "  " << ShapeText(r.shape) << ", " << r.shape.sequences_per_attention_rank << " per attention rank: "
          << r.reason << "\n";
    }
  }
  return out.str();
}

std::string PlanTable(const Plan& plan) {
  std::ostringstream out;
  out << "HeterMoE plan for " << plan.model_source << " (L=" << plan.model.layers << ", n=" << plan.model.experts
      << " experts, top-" << plan.model.top_k << ", d=" << plan.model.hidden << ")\n";
  out << "  seq-len " << plan.seq_len << ", global batch " << plan.global_batch << " sequences, precision "
      << PrecisionName(plan.precision) << "\n";
  out << "  attention ranks: " << Join(plan.attention_kinds) << "; expert ranks: " << Join(plan.expert_kinds)
      << "\n\n";

  for (size_t c = 0; c < plan.classes.size(); ++c) {
    const GroupClass& gc = plan.classes[c];
    const GroupShape& s = gc.shape;
    out << "group class " << c << ": " << s.groups << " x (" << s.attention_ranks << " " << s.attention_gpu << " : "
        << s.expert_ranks << " " << s.expert_gpu << "), " << s.sequences_per_attention_rank
        << " sequences per attention rank, R = " << s.micro_batches << " micro-batches\n";
    out << "  Asym-EA: ";
    if (gc.asym_ea_used) {
      out << "experts moved per layer [";
      for (size_t l = 0; l < s.offloaded.size(); ++l) out << (l ? " " : "") << s.offloaded[l];
      out << "] (chunk " << gc.asym_ea.chunk << ", T_gather " << Format("%.4f", gc.asym_ea.t_gather)
          << " s, T_squeeze " << Format("%.4f", gc.asym_ea.t_squeeze) << " s)\n";
    } else {
      out << "not used\n";
    }
    out << "  step " << Format("%.3f", gc.step_seconds) << " s, busy: attention "
        << Format("%.0f%%", 100 * gc.attention_busy) << ", expert " << Format("%.0f%%", 100 * gc.expert_busy)
        << "; n_min " << gc.memory.n_min << ", n_max " << gc.memory.n_max << "\n";
  }

  out << "\ngroups (" << plan.groups.size() << "):\n";
  for (size_t g = 0; g < plan.groups.size() && g < kGroupsShown; ++g) {
    out << "  " << g << " [class " << plan.groups[g].group_class << "] attention " << Slots(plan.groups[g].attention)
        << " | expert " << Slots(plan.groups[g].expert) << "\n";
  }
  if (plan.groups.size() > kGroupsShown) out << "  ... " << plan.groups.size() - kGroupsShown << " more\n";
  if (!plan.unused.empty()) out << "unused GPUs: " << plan.unused.size() << "\n";

  out << "\npredicted: " << Format("%.3f", plan.predicted.step_seconds) << " s/step, "
      << Format("%.0f", plan.predicted.tokens_per_second) << " tokens/s; utilisation";
  for (const auto& [kind, u] : plan.predicted.utilisation) out << " " << kind << " " << Format("%.0f%%", 100 * u);
  out << "\n\nbaseline      tokens/s   HeterMoE speed-up\n";
  const std::pair<const char*, const BaselinePrediction*> rows[] = {{"EP", &plan.baselines.ep},
                                                                    {"DistEP", &plan.baselines.distep},
                                                                    {"EP-Ideal", &plan.baselines.ep_ideal},
                                                                    {"PP", &plan.baselines.pp}};
  for (const auto& [name, b] : rows) {
    char line[160];
    if (b->feasible) {
      std::snprintf(line, sizeof(line), "  %-9s %10.0f   %.2fx\n", name, b->tokens_per_second,
                    plan.predicted.tokens_per_second / b->tokens_per_second);
    } else {
      std::snprintf(line, sizeof(line), "  %-9s %10s   -\n", name, "n/a");
    }
    out << line;
    if (!b->note.empty()) out << "            " << b->note << "\n";
  }
  for (const std::string& note : plan.notes) out << "note: " << note << "\n";
  return out.str();
}

}  // namespace hetermoe::planner
