// The plan policy: see plan_policy.h.
#include "operator/core/policies/plan_policy.h"

#include "operator/core/children.h"
#include "operator/core/conditions.h"

namespace hetermoe::op {

using nlohmann::json;

bool PlanIsCurrent(const json& config_map, int64_t attempt) {
  const json labels = config_map.contains("metadata") ? config_map["metadata"].value("labels", json::object())
                                                      : json::object();
  auto labelled = IntLabel(labels, kLabelAttempt);
  return labelled && *labelled == attempt;
}

std::optional<PlacementDecision> KeptPlan(const std::optional<json>& config_map, int64_t attempt) {
  if (!config_map || !PlanIsCurrent(*config_map, attempt)) return std::nullopt;
  const json& cm = *config_map;
  if (!cm.contains("data") || !cm["data"].contains("plan.json")) return std::nullopt;
  try {
    return PlacementFromPlanJson(json::parse(cm["data"]["plan.json"].get<std::string>()));
  } catch (const std::exception&) {
    return std::nullopt;  // an unreadable plan is replaced
  }
}

PlacementDecision MakePlan(const JobSpec& spec, const std::string& model_config,
                           const std::vector<InventoryNode>& nodes, const PlacementPolicy& placement) {
  PlacementRequest request;
  request.spec = &spec;
  request.model = io::ParseMixtralConfigText(model_config, "spec.model");
  request.nodes = nodes;
  PlacementDecision plan = placement.Place(request);
  FinishEnginePlan(spec, request.model, plan);
  return plan;
}

PlanSummary SummarisePlan(const HeterMoEJob& job, const PlacementDecision& plan) {
  return PlanSummary{plan.attention.replicas,
                     plan.expert.replicas,
                     plan.attention.replicas + plan.expert.replicas,
                     plan.attention.gpu_products.empty() ? "cpu" : plan.attention.gpu_products.front(),
                     plan.expert.gpu_products.empty() ? "cpu" : plan.expert.gpu_products.front(),
                     PlanConfigMapName(job.meta.name),
                     plan.summary,
                     plan.shape,
                     plan.runner_up};
}

std::optional<PlacementDecision> PlanPolicy(const JobObservation& o, const PlacementPolicy& placement, JobDecision& d) {
  const int64_t attempt = CurrentAttempt(o);
  std::optional<PlacementDecision> plan = KeptPlan(o.plan_config_map, attempt);
  if (!plan) {
    try {
      plan = MakePlan(o.job.spec, *o.model_config, o.nodes, placement);
    } catch (const PlacementError& e) {
      SetCondition(d.status, kCondCreated, false, "Unschedulable", e.what(), FormatTime(o.now));
      d.requeue_after_seconds = 30;
      return std::nullopt;
    }
    d.apply_config_map = BuildPlanConfigMap(o.job, *plan, *o.model_config, attempt);
  }
  d.status.plan = SummarisePlan(o.job, *plan);
  return plan;
}

}  // namespace hetermoe::op
