// Status from the pods: what the current attempt's pods say about the job.
// Replica counts per role (active, succeeded, failed) count the current
// attempt's pods only. Once the plan's children exist: every slot's pod
// succeeded -> Succeeded (with rank 0's final step and loss from its
// termination summary, which outlives its metrics endpoint); at least one
// running and the rest running or succeeded -> Running (Restarting
// cleared); otherwise a job that was Running is no longer (PodsNotRunning,
// "N of M pods running"). Pods being deleted count as neither. Pure.
#pragma once

#include <cstdint>
#include <vector>

#include "operator/core/job_reconcile.h"
#include "operator/core/policies/desired_children_policy.h"
#include "operator/core/policies/policy.h"

namespace hetermoe::op {

// status.attention / status.expert from the pods of `attempt`.
void CountReplicas(const std::vector<ObservedPod>& pods, int64_t attempt, JobStatus& status);

// `slots` from PlanSlots; `current`: this attempt's pods.
void StatusFromPodsPolicy(const JobObservation& observed, const std::vector<PlanSlot>& slots,
                          const std::vector<const ObservedPod*>& current, JobDecision& decision);

}  // namespace hetermoe::op
