// The plan policy: one plan per attempt. The plan ConfigMap keeps the plan
// an attempt was made with (its attempt label, plan.json), so every
// reconcile of that attempt, and a restarted operator, builds the same pods.
// Without a readable plan for the current attempt a new one is made from the
// usable GPU nodes (the PlacementPolicy, then FinishEnginePlan) and the
// ConfigMap is applied; a job that cannot be placed now stays Pending with
// Created False (Unschedulable, the placement's reason) and the reconcile
// comes back in 30 s. Either way status.plan summarises the plan. Pure.
//
// PlanIsCurrent is the attempt check alone; the controller asks KeptPlan to
// know whether the node inventory is needed at all (a ConfigMap of this
// attempt whose plan.json cannot be read needs a new plan, hence the nodes).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "operator/core/job_reconcile.h"
#include "operator/core/policies/policy.h"

namespace hetermoe::op {

// Whether the plan ConfigMap was written for `attempt` (its attempt label).
bool PlanIsCurrent(const nlohmann::json& config_map, int64_t attempt);

// The plan `config_map` keeps for `attempt`; nullopt when there is none,
// it is another attempt's, or its plan.json cannot be read.
std::optional<PlacementDecision> KeptPlan(const std::optional<nlohmann::json>& config_map, int64_t attempt);

// A new plan for `spec` over `nodes`; throws PlacementError when the job
// cannot be placed (or the engine cannot run the placement).
PlacementDecision MakePlan(const JobSpec& spec, const std::string& model_config,
                           const std::vector<InventoryNode>& nodes, const PlacementPolicy& placement);

// status.plan for `plan`.
PlanSummary SummarisePlan(const HeterMoEJob& job, const PlacementDecision& plan);

// nullopt: stop (unschedulable).
std::optional<PlacementDecision> PlanPolicy(const JobObservation& observed, const PlacementPolicy& placement,
                                            JobDecision& decision);

}  // namespace hetermoe::op
