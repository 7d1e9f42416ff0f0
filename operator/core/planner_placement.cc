// PlannerPolicy: the PlacementPolicy backed by planner/'s plan search
// (built only when the hetermoe_planner library exists; see placement.h).
//
// The planner plans one rank per GPU and picks the attention/expert split of
// GPU kinds itself, so it is used when both roles are "auto" with one GPU
// per pod; explicit replicas, CPU roles or multi-GPU pods keep the user's
// numbers through the tier rule. Nodes whose GFD product the profile table
// does not know are left out of the planner's inventory. A plan whose roles
// break a role's gpuSelector is not used either (the tier rule decides).
//
// A node's NIC bandwidth comes from its label hetermoe.io/nic-gbps (Gbit/s,
// the whole node's); without it the planner's default (100 Gb/s per node)
// holds. The planner prices transfers between nodes with it, so whole-node
// clusters should carry the label.
#include <cstdlib>
#include <map>
#include <set>

#include "operator/core/placement.h"
#include "planner/gpu_profiles.h"
#include "planner/inventory.h"
#include "planner/model_shape.h"
#include "planner/plan_json.h"
#include "planner/planner.h"

namespace hetermoe::op {

namespace {

class PlannerPolicy : public PlacementPolicy {
 public:
  PlannerPolicy() : profiles_(planner::GpuProfileTable::Builtin()) {}

  PlacementDecision Place(const PlacementRequest& request) const override {
    const JobSpec& spec = *request.spec;
    const bool planner_decides = !spec.attention.replicas && !spec.expert.replicas &&
                                 spec.attention.gpus_per_replica == 1 && spec.expert.gpus_per_replica == 1;
    if (!planner_decides) return tier_.Place(request);
    // The tier rule instead, saying why (status.plan.summary).
    auto fallback = [&](const std::string& why) {
      PlacementDecision d = tier_.Place(request);
      d.summary += " (planner not used: " + why + ")";
      return d;
    };

    planner::PlanRequest plan_request;
    std::string label_notes;
    std::map<std::string, std::set<std::string>> products_by_kind;
    std::map<std::string, const InventoryNode*> node_by_name;
    for (const InventoryNode& n : request.nodes) {
      if (!MatchesSelector(n, spec.attention.gpu_selector) && !MatchesSelector(n, spec.expert.gpu_selector)) continue;
      auto kind = profiles_.Canonical(n.gpu.product);
      if (!kind || n.gpus <= 0) continue;
      double nic_gbps = 0;
      if (const auto label = n.labels.find(kLabelNicGbps); label != n.labels.end()) {
        char* end = nullptr;
        const double value = std::strtod(label->second.c_str(), &end);
        if (end != label->second.c_str() && *end == '\0' && value > 0 && value < 1e6) {
          nic_gbps = value;
        } else {
          label_notes += "; node " + n.name + ": " + kLabelNicGbps + " '" + label->second +
                         "' is not a bandwidth in Gbit/s, ignored";
        }
      }
      plan_request.inventory.nodes.push_back({n.name, *kind, static_cast<int>(n.gpus), nic_gbps});
      products_by_kind[*kind].insert(n.gpu.product);
      node_by_name[n.name] = &n;
    }
    if (plan_request.inventory.nodes.empty()) return fallback("no GPU the planner's profiles know");
    plan_request.inventory.source = "cluster nodes";
    plan_request.model = planner::ModelShape::FromMixtral(request.model, "spec.model");
    plan_request.seq_len = spec.training.seq_len;
    plan_request.global_batch = spec.training.global_batch;
    plan_request.asym_ea = spec.dispatch.asymmetric_offload;
    plan_request.micro_batches_in_flight = static_cast<int>(spec.parallel.micro_batches_in_flight);
    plan_request.zero = spec.training.zero == 1;
    plan_request.recompute = spec.training.recompute;
    plan_request.dedup = spec.dispatch.dedup;
    plan_request.dedup_depth = spec.dispatch.dedup_depth;
    plan_request.baselines = false;

    planner::Plan plan;
    try {
      planner::ValidateInventory(plan_request.inventory, profiles_);
      plan = planner::MakePlan(plan_request, profiles_);
    } catch (const Error& e) {
      throw PlacementError(std::string("planner: ") + e.what());
    }

    // The engine runs equal groups: a plan mixing group shapes is not used.
    if (plan.classes.size() != 1)
      return fallback("its " + std::to_string(plan.classes.size()) + " group shapes; the engine runs one");
    PlacementDecision d;
    d.attention.gpus_per_replica = d.expert.gpus_per_replica = 1;
    d.zp_groups = static_cast<int64_t>(plan.groups.size());
    const planner::GroupClass& cls = plan.classes.front();
    d.micro_batches = static_cast<int64_t>(cls.shape.micro_batches) * cls.shape.attention_ranks * cls.shape.groups;
    if (cls.asym_ea_used && !cls.shape.offloaded.empty()) {
      d.asym_ea = "list";
      d.asym_ea_layers = cls.shape.offloaded;
    }
    for (const planner::ZpGroup& group : plan.groups) {
      d.attention.replicas += static_cast<int64_t>(group.attention.size());
      d.expert.replicas += static_cast<int64_t>(group.expert.size());
      // Every slot's node must satisfy its role's selector.
      for (const auto* slots : {&group.attention, &group.expert}) {
        const bool attention = slots == &group.attention;
        for (const planner::GpuSlot& slot : *slots) {
          auto it = node_by_name.find(slot.node);
          if (it != node_by_name.end() &&
              !MatchesSelector(*it->second, attention ? spec.attention.gpu_selector : spec.expert.gpu_selector))
            return fallback(std::string("it puts ") + (attention ? "attention" : "expert") + " ranks on " +
                            slot.gpu + " GPUs, outside that role's gpuSelector");
        }
      }
    }
    if (d.attention.replicas == 0 || d.expert.replicas == 0)
      throw PlacementError("planner: the plan has no attention or no expert ranks");
    auto products = [&](const std::vector<std::string>& kinds) {
      std::set<std::string> out;
      for (const std::string& k : kinds)
        for (const std::string& p : products_by_kind[k]) out.insert(p);
      return std::vector<std::string>(out.begin(), out.end());
    };
    d.attention.gpu_products = products(plan.attention_kinds);
    d.expert.gpu_products = products(plan.expert_kinds);
    auto kinds = [](const std::vector<std::string>& v) {
      std::string s;
      for (const auto& k : v) s += (s.empty() ? "" : "+") + k;
      return s;
    };
    char predicted[64];
    std::snprintf(predicted, sizeof predicted, "%.0f", plan.predicted.tokens_per_second);
    d.summary = "planner: " + std::to_string(d.attention.replicas) + " attention (" + kinds(plan.attention_kinds) +
                ") : " + std::to_string(d.expert.replicas) + " expert (" + kinds(plan.expert_kinds) + ") in " +
                std::to_string(plan.groups.size()) + " ZP group(s), " + std::to_string(d.micro_batches) +
                " micro-batches per step, predicted " + predicted + " tokens/s" + label_notes;
    d.planner_detail = planner::PlanToJson(plan);
    auto shape_line = [&](const planner::GroupShape& s, double step) {
      char predicted_step[48];
      std::snprintf(predicted_step, sizeof predicted_step, ", predicted %.3f s/step", step);
      return planner::ShapeText(s) + ", " + std::to_string(s.sequences_per_attention_rank) +
             " sequences per attention rank, R " + std::to_string(s.micro_batches) + predicted_step;
    };
    d.shape = shape_line(cls.shape, cls.step_seconds);
    if (!plan.alternatives.empty())
      d.runner_up = shape_line(plan.alternatives.front().shape, plan.alternatives.front().step_seconds);
    return d;
  }

 private:
  planner::GpuProfileTable profiles_;
  TierPolicy tier_;
};

}  // namespace

std::unique_ptr<PlacementPolicy> MakePlannerPolicy() { return std::make_unique<PlannerPolicy>(); }

}  // namespace hetermoe::op
