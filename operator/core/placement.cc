// The simple tier rule and plan.json: see placement.h.
#include "operator/core/placement.h"

#include <algorithm>
#include <map>
#include <set>

#include "trainer/parallel/placement.h"

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

PlacementDecision TierPolicy::Place(const PlacementRequest& request) const {
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

void FinishEnginePlan(const JobSpec& spec, const io::MixtralConfig& model, PlacementDecision& d) {
  if (spec.parallel.zp_groups > 0) d.zp_groups = spec.parallel.zp_groups;
  if (d.zp_groups < 1) d.zp_groups = 1;
  const int64_t G = d.zp_groups;
  if (d.attention.replicas % G != 0 || d.expert.replicas % G != 0)
    throw PlacementError(std::to_string(d.attention.replicas) + " attention and " +
                         std::to_string(d.expert.replicas) + " expert pods cannot form " + std::to_string(G) +
                         " equal ZP groups (parallel.zpGroups)");
  if (d.micro_batches <= 0) d.micro_batches = spec.training.micro_batches;
  if (spec.training.global_batch % d.micro_batches != 0)
    throw PlacementError("the plan's " + std::to_string(d.micro_batches) + " micro-batches do not divide training.globalBatch " +
                         std::to_string(spec.training.global_batch));
  const bool ep = spec.parallel.schedule == "ep";
  if (!spec.dispatch.asymmetric_offload || ep) {
    d.asym_ea = "off";
    d.asym_ea_layers.clear();
  } else if (d.asym_ea != "list") {
    d.asym_ea = "auto";
  }
  try {
    const parallel::Placement engine = parallel::MakePlacement(
        ParseSchedule(spec.parallel.schedule), static_cast<int>(d.attention.replicas / G),
        static_cast<int>(d.expert.replicas / G), static_cast<int>(G), static_cast<int>(model.num_hidden_layers),
        model.num_local_experts, static_cast<int>(d.micro_batches),
        d.asym_ea == "list" ? d.asym_ea_layers : std::vector<int>{});
    d.engine = json::parse(engine.ToJson());
  } catch (const PlacementError&) {
    throw;
  } catch (const Error& e) {
    throw PlacementError(std::string("the engine cannot run this plan: ") + e.what());
  }
}

int64_t RankOf(const PlacementDecision& d, Role role, int64_t index) {
  const int64_t G = std::max<int64_t>(1, d.zp_groups);
  const int64_t M = d.attention.replicas / G, N = d.expert.replicas / G;
  if (role == Role::kAttention) return (index / M) * (M + N) + index % M;
  return (index / N) * (M + N) + M + index % N;
}

json PlanJson(const PlacementDecision& d, const std::string& job_name, int64_t attempt) {
  auto role = [&](const RolePlacement& r, Role which) {
    json ranks = json::array();  // the global rank of each replica index
    for (int64_t i = 0; i < r.replicas; ++i) ranks.push_back(RankOf(d, which, i));
    return json{{"replicas", r.replicas},
                {"gpusPerReplica", r.gpus_per_replica},
                {"gpuProducts", r.gpu_products},
                {"ranks", ranks}};
  };
  json plan = {{"job", job_name},
               {"attempt", attempt},
               {"worldSize", d.attention.replicas + d.expert.replicas},
               {"attention", role(d.attention, Role::kAttention)},
               {"expert", role(d.expert, Role::kExpert)},
               {"zpGroups", d.zp_groups},
               {"microBatches", d.micro_batches},
               {"asymEa", d.asym_ea},
               {"asymEaLayers", d.asym_ea_layers},
               {"engine", d.engine},
               {"summary", d.summary}};
  if (!d.shape.empty()) plan["shape"] = d.shape;
  if (!d.runner_up.empty()) plan["runnerUp"] = d.runner_up;
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
  d.zp_groups = plan.at("zpGroups").get<int64_t>();
  d.micro_batches = plan.at("microBatches").get<int64_t>();
  d.asym_ea = plan.at("asymEa").get<std::string>();
  d.asym_ea_layers = plan.at("asymEaLayers").get<std::vector<int>>();
  d.engine = plan.at("engine");
  d.summary = plan.value("summary", "");
  d.shape = plan.value("shape", "");
  d.runner_up = plan.value("runnerUp", "");
  if (plan.contains("planner")) d.planner_detail = plan["planner"];
  return d;
}

}  // namespace hetermoe::op
