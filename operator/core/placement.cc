// The simple tier rule and plan.json: see placement.h.
#include "operator/core/placement.h"

#include <algorithm>
#include <map>
#include <set>

namespace hetermoe::op {

using nlohmann::json;

bool MatchesSelector(const InventoryNode& node, const std::optional<GpuSelector>& selector) {
  if (!selector) return true;
  const GpuSelector& s = *selector;
  if (s.min_compute_capability || s.max_compute_capability) {
    if (!node.gpu.compute) return false;
    if (s.min_compute_capability) {
      auto min = ParseComputeCapability(*s.min_compute_capability);
      if (min && node.gpu.compute->Tenths() < min->Tenths()) return false;
    }
    if (s.max_compute_capability) {
      auto max = ParseComputeCapability(*s.max_compute_capability);
      if (max && node.gpu.compute->Tenths() > max->Tenths()) return false;
    }
  }
  if (!s.families.empty()) {
    auto it = node.labels.find(kGfdFamily);
    std::string family = it == node.labels.end() ? "" : it->second;
    if (std::find(s.families.begin(), s.families.end(), family) == s.families.end()) return false;
  }
  if (!s.products.empty() &&
      std::find(s.products.begin(), s.products.end(), node.gpu.product) == s.products.end())
    return false;
  return true;
}

namespace {

RolePlacement PlaceRole(const RoleSpec& role, Role which, const std::vector<InventoryNode>& nodes) {
  RolePlacement out;
  out.gpus_per_replica = role.gpus_per_replica;
  const char* name = RoleName(which);
  if (role.gpus_per_replica == 0) {
    if (!role.replicas) throw PlacementError(std::string(name) + ": replicas \"auto\" needs GPUs");
    out.replicas = *role.replicas;
    return out;
  }
  // Pods fit per node: a pod's GPUs come from one node.
  int64_t fit = 0;
  std::set<std::string> products;
  for (const InventoryNode& n : nodes) {
    if (n.tier != name || !MatchesSelector(n, role.gpu_selector)) continue;
    int64_t pods = n.gpus / role.gpus_per_replica;
    if (pods == 0) continue;
    fit += pods;
    products.insert(n.gpu.product);
  }
  out.gpu_products.assign(products.begin(), products.end());
  out.replicas = role.replicas.value_or(fit);
  if (out.replicas == 0 || out.replicas > fit)
    throw PlacementError(std::string(name) + ": " + std::to_string(out.replicas == 0 ? 1 : out.replicas) +
                         " pod(s) of " + std::to_string(role.gpus_per_replica) + " GPU(s) needed, " +
                         std::to_string(fit) + " fit on ready " + name + "-tier nodes");
  return out;
}

}  // namespace

PlacementDecision TierPlacement::Place(const PlacementRequest& request) const {
  const JobSpec& spec = *request.spec;
  PlacementDecision d;
  d.attention = PlaceRole(spec.attention, Role::kAttention, request.nodes);
  d.expert = PlaceRole(spec.expert, Role::kExpert, request.nodes);
  const int64_t experts = request.model.num_local_experts;
  if (d.expert.replicas > experts) {
    if (spec.expert.replicas)
      throw PlacementError("expert: " + std::to_string(d.expert.replicas) + " replicas but the model has " +
                           std::to_string(experts) + " experts per layer");
    d.expert.replicas = experts;  // "auto": no more ranks than experts
  }
  d.experts_by_rank.assign(d.expert.replicas, {});
  for (int e = 0; e < experts; ++e) d.experts_by_rank[e % d.expert.replicas].push_back(e);
  auto products = [](const RolePlacement& r) {
    if (r.gpu_products.empty()) return std::string("cpu");
    std::string s;
    for (const auto& p : r.gpu_products) s += (s.empty() ? "" : "+") + p;
    return s;
  };
  d.summary = "tier rule: " + std::to_string(d.attention.replicas) + " attention (" + products(d.attention) +
              ") : " + std::to_string(d.expert.replicas) + " expert (" + products(d.expert) + "), " +
              std::to_string(experts) + " experts/layer";
  return d;
}

json PlanJson(const PlacementDecision& d, const std::string& job_name, int64_t attempt) {
  auto role = [](const RolePlacement& r, int64_t first_rank) {
    return json{{"replicas", r.replicas},
                {"gpusPerReplica", r.gpus_per_replica},
                {"gpuProducts", r.gpu_products},
                {"firstRank", first_rank}};
  };
  json plan = {{"job", job_name},
               {"attempt", attempt},
               {"worldSize", d.attention.replicas + d.expert.replicas},
               {"attention", role(d.attention, 0)},
               {"expert", role(d.expert, d.attention.replicas)},
               {"expertsByRank", d.experts_by_rank},
               {"summary", d.summary}};
  if (!d.planner_detail.is_null()) plan["planner"] = d.planner_detail;
  return plan;
}

PlacementDecision PlacementFromPlanJson(const json& plan) {
  PlacementDecision d;
  auto role = [](const json& j) {
    RolePlacement r;
    r.replicas = j.at("replicas").get<int64_t>();
    r.gpus_per_replica = j.at("gpusPerReplica").get<int64_t>();
    r.gpu_products = j.at("gpuProducts").get<std::vector<std::string>>();
    return r;
  };
  d.attention = role(plan.at("attention"));
  d.expert = role(plan.at("expert"));
  d.experts_by_rank = plan.at("expertsByRank").get<std::vector<std::vector<int>>>();
  d.summary = plan.value("summary", "");
  if (plan.contains("planner")) d.planner_detail = plan["planner"];
  return d;
}

}  // namespace hetermoe::op
