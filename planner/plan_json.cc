// Plan -> JSON (field list in plan_json.h).
#include "planner/plan_json.h"

#include "planner/step_json.h"

namespace hetermoe::planner {
namespace {

using nlohmann::json;

json Slot(const GpuSlot& slot) { return {{"node", slot.node}, {"gpu_index", slot.gpu_index}}; }

json Baseline(const BaselinePrediction& b) {
  return {{"feasible", b.feasible},
          {"tokens_per_second", b.tokens_per_second},
          {"step_seconds", b.step_seconds},
          {"note", b.note}};
}

double Speedup(const Plan& plan, const BaselinePrediction& b) {
  return b.feasible && b.tokens_per_second > 0 ? plan.predicted.tokens_per_second / b.tokens_per_second : 0;
}

json Class(const GroupClass& c) {
  json placement = json::array();
  for (size_t l = 0; l < c.placement.size(); ++l) {
    placement.push_back({{"layer", l},
                         {"expert_ranks", c.placement[l].expert_ranks},
                         {"attention_ranks", c.placement[l].attention_ranks}});
  }
  std::vector<int> offloaded = c.shape.offloaded;
  if (offloaded.empty()) offloaded.assign(c.placement.size(), 0);
  return {
      {"attention_gpu", c.shape.attention_gpu},
      {"expert_gpu", c.shape.expert_gpu},
      {"attention_ranks", c.shape.attention_ranks},
      {"expert_ranks", c.shape.expert_ranks},
      {"groups", c.shape.groups},
      {"sequences_per_attention_rank", c.shape.sequences_per_attention_rank},
      {"micro_batches", c.shape.micro_batches},
      {"asym_ea",
       {{"used", c.asym_ea_used},
        {"offloaded", offloaded},
        {"n1", c.asym_ea.n1},
        {"n2", c.asym_ea.n2},
        {"t_gather_seconds", c.asym_ea.t_gather},
        {"t_squeeze_seconds", c.asym_ea.t_squeeze},
        {"alpha", c.asym_ea.alpha},
        {"beta", c.asym_ea.beta}}},
      {"placement", placement},
      {"step_seconds", c.step_seconds},
      {"busy", {{"attention", c.attention_busy}, {"expert", c.expert_busy}}},
      {"memory",
       {{"n_min", c.memory.n_min},
        {"n_max", c.memory.n_max},
        {"attention_rank_bytes", c.memory.attention_base},
        {"attention_usable_bytes", c.memory.attention_usable},
        {"expert_usable_bytes", c.memory.expert_usable},
        {"experts_per_expert_rank", c.memory.experts_per_expert_rank},
        // Parameters + optimizer state alone (what the engine reports as
        // rank_state_bytes): an attention rank's without offloaded experts,
        // the busiest expert rank's before Asym-EA.
        {"attention_state_bytes", c.memory.attention_state},
        {"expert_rank_state_bytes", c.memory.expert_state * c.memory.experts_per_expert_rank}}},
  };
}

}  // namespace

json PlanToJson(const Plan& plan, bool with_timeline) {
  json j;
  j["format"] = "hetermoe-plan/1";
  j["model"] = {{"config", plan.model_source},
                {"layers", plan.model.layers},
                {"experts", plan.model.experts},
                {"top_k", plan.model.top_k},
                {"hidden_size", plan.model.hidden},
                {"intermediate_size", plan.model.ffn}};
  j["seq_len"] = plan.seq_len;
  j["global_batch"] = plan.global_batch;
  json precision = json::object();
  for (const auto& kinds : {plan.attention_kinds, plan.expert_kinds}) {
    for (const std::string& kind : kinds) precision[kind] = PrecisionName(plan.precision);
  }
  j["precision"] = precision;
  j["roles"] = {{"attention", plan.attention_kinds}, {"expert", plan.expert_kinds}};

  const GroupClass& first = plan.classes.front();
  j["micro_batches"] = first.shape.micro_batches;
  std::vector<int> asym = first.shape.offloaded;
  if (asym.empty()) asym.assign(static_cast<size_t>(plan.model.layers), 0);
  j["asym_ea"] = asym;

  j["group_classes"] = json::array();
  for (const GroupClass& c : plan.classes) j["group_classes"].push_back(Class(c));
  j["groups"] = json::array();
  for (const ZpGroup& g : plan.groups) {
    json attention = json::array(), expert = json::array();
    for (const GpuSlot& s : g.attention) attention.push_back(Slot(s));
    for (const GpuSlot& s : g.expert) expert.push_back(Slot(s));
    j["groups"].push_back({{"class", g.group_class}, {"attention", attention}, {"expert", expert}});
  }
  j["unused"] = json::array();
  for (const GpuSlot& s : plan.unused) {
    j["unused"].push_back({{"node", s.node}, {"gpu_index", s.gpu_index}, {"gpu", s.gpu}});
  }
  j["predicted"] = {{"step_seconds", plan.predicted.step_seconds},
                    {"tokens_per_second", plan.predicted.tokens_per_second},
                    {"utilisation", plan.predicted.utilisation}};
  j["baselines"] = {{"ep", Baseline(plan.baselines.ep)},
                    {"distep", Baseline(plan.baselines.distep)},
                    {"ep_ideal", Baseline(plan.baselines.ep_ideal)},
                    {"pp", Baseline(plan.baselines.pp)}};
  j["speedup"] = {{"over_ep", Speedup(plan, plan.baselines.ep)},
                  {"over_distep", Speedup(plan, plan.baselines.distep)},
                  {"over_ep_ideal", Speedup(plan, plan.baselines.ep_ideal)},
                  {"over_pp", Speedup(plan, plan.baselines.pp)}};
  j["notes"] = plan.notes;
  json alternatives = json::array();
  for (const GroupEvaluation& e : plan.alternatives) {
    alternatives.push_back({{"shape", ShapeText(e.shape)},
                            {"sequences_per_attention_rank", e.shape.sequences_per_attention_rank},
                            {"micro_batches", e.shape.micro_batches},
                            {"step_seconds", e.step_seconds}});
  }
  json refused = json::array();
  for (const RefusedShape& r : plan.refused) {
    refused.push_back({{"shape", ShapeText(r.shape)},
                       {"sequences_per_attention_rank", r.shape.sequences_per_attention_rank},
                       {"reason", r.reason}});
  }
  j["search"] = {{"shapes_enumerated", plan.shapes_enumerated},
                 {"shapes_priced", plan.shapes_priced},
                 {"alternatives", alternatives},
                 {"refused", refused}};
  if (with_timeline) j["timeline"] = TimelineToJson(plan.timeline);
  return j;
}

}  // namespace hetermoe::planner
