// PlacementPolicy: how many attention and expert pods a job gets, on which
// GPU products, and which experts each expert rank holds. (The engine's
// parallel::Placement, who does what among the ranks, is one part of the
// decision: PlacementDecision::engine.)
//
// The operator only needs this narrow interface from the planner. Two
// implementations: TierPolicy (a simple rule, always available) and
// PlannerPolicy (planner/'s cost-model search, when the hetermoe_planner
// library is built). Pods are never pinned to nodes: the decision names GPU
// products, and pods get node affinity on them so the scheduler stays in
// charge.
//
// Implementations are pure and thread-safe (const). Place() throws
// PlacementError with a one-line reason when the job cannot be placed now
// (too few GPUs); the reconciler reports it in the Created condition and
// waits for nodes.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/mixtral_config.h"
#include "operator/api/hetermoejob.h"
#include "operator/core/node_inventory.h"

namespace hetermoe::op {

// Node label: the node's NIC bandwidth in Gbit/s, for the planner's transfer
// prices (set by the cluster admin; the planner assumes 100 otherwise).
inline constexpr const char* kLabelNicGbps = "hetermoe.io/nic-gbps";

class PlacementError : public Error {
 public:
  using Error::Error;
};

struct PlacementRequest {
  const JobSpec* spec = nullptr;
  io::MixtralConfig model;
  std::vector<InventoryNode> nodes;  // usable GPU nodes (UsableGpuNodes)
};

struct RolePlacement {
  int64_t replicas = 0;
  int64_t gpus_per_replica = 0;
  std::vector<std::string> gpu_products;  // GFD products the pods may land on; empty = CPU
};

struct PlacementDecision {
  RolePlacement attention, expert;
  // The engine's shape: ZP groups (each with attention.replicas / zp_groups
  // attention and expert.replicas / zp_groups expert ranks) and Asym-EA.
  int64_t zp_groups = 1;
  // Micro-batches per step, all attention ranks together (the run file's
  // train.micro_batches): training.microBatches, unless the planner sized
  // the roles, then its R per attention rank x the attention ranks. 0 = spec's.
  int64_t micro_batches = 0;
  std::string asym_ea = "off";     // off | auto (the ranks profile at start-up) | list
  std::vector<int> asym_ea_layers; // experts moved to attention ranks, per layer ("list")
  // The engine's placement as the trainer will run it (parallel::Placement's
  // JSON: every rank's group, role, micro-batches and experts per layer;
  // with asym_ea "auto", before any expert moves). Set by FinishEnginePlan.
  nlohmann::json engine;
  std::string summary;            // one line for status.plan.summary
  // The planner's chosen group shape and the next best, each with its
  // predicted step (status.plan.shape, status.plan.runnerUp); empty when the
  // planner did not decide.
  std::string shape;
  std::string runner_up;
  nlohmann::json planner_detail;  // the planner's full plan, or null
};

class PlacementPolicy {
 public:
  virtual ~PlacementPolicy() = default;
  virtual PlacementDecision Place(const PlacementRequest& request) const = 0;
};

// Completes a decision with what the engine needs and checks that the engine
// can run it: ZP groups (spec.parallel.zpGroups, else the planner's, else 1;
// both roles' replicas must divide evenly), Asym-EA (off when
// dispatch.asymmetricOffload is false or the schedule is ep; the planner's
// per-layer list when it made one; else auto) and `engine`. Throws
// PlacementError naming the mismatch (e.g. micro-batches vs attention ranks).
void FinishEnginePlan(const JobSpec& spec, const io::MixtralConfig& model, PlacementDecision& decision);

// The global rank of a role's replica `index` (the engine's order: group by
// group, each group's attention ranks first, then its expert ranks).
int64_t RankOf(const PlacementDecision& decision, Role role, int64_t index);

// Whether a node's GPU satisfies a role's selector (null selector: any).
bool MatchesSelector(const InventoryNode& node, const std::optional<GpuSelector>& selector);

// The simple rule: each role takes the GPUs of its tier ("attention" nodes
// for attention, "expert" nodes for experts) that match its selector;
// "auto" replicas = those GPUs / gpusPerReplica; explicit replicas must fit.
// CPU roles (gpusPerReplica 0) need explicit replicas and no GPUs.
class TierPolicy : public PlacementPolicy {
 public:
  PlacementDecision Place(const PlacementRequest& request) const override;
};

// The best placement available in this build: PlannerPolicy when the
// planner library is linked, TierPolicy otherwise.
std::unique_ptr<PlacementPolicy> MakeDefaultPolicy();

// plan.json as mounted into the pods: ranks, roles, products, ZP groups,
// Asym-EA and the engine's placement (plus the planner's detail when there
// is one). The trainer refuses to run when its own placement differs.
nlohmann::json PlanJson(const PlacementDecision& decision, const std::string& job_name, int64_t attempt);
// Reads back a decision from plan.json (the ConfigMap keeps the plan stable).
PlacementDecision PlacementFromPlanJson(const nlohmann::json& plan);

}  // namespace hetermoe::op
