// The desired children policy: what to create so the plan's children exist.
// The headless Service when it is missing; the Volcano PodGroup under
// schedulingPolicy.scheduler volcano (applied each time: apply is
// idempotent); a pod for every slot of the plan (role, replica index) that
// no pod of the current attempt fills. The first pods created start the
// job's clock (startTime, for activeDeadlineSeconds). Created turns True
// once nothing is left to create: it means the pods exist (seen in the
// cache), not that they were asked for. Pure.
#pragma once

#include <cstdint>
#include <vector>

#include "operator/core/job_reconcile.h"
#include "operator/core/policies/policy.h"

namespace hetermoe::op {

// One pod the plan calls for, and the pod of the current attempt that fills
// it (nullptr: missing).
struct PlanSlot {
  Role role = Role::kAttention;
  int64_t index = 0;
  const ObservedPod* pod = nullptr;
};

// Every slot of `plan`: attention replicas by index, then expert replicas.
std::vector<PlanSlot> PlanSlots(const PlacementDecision& plan, const std::vector<const ObservedPod*>& current);

void DesiredChildrenPolicy(const JobObservation& observed, const PlacementDecision& plan,
                           const std::vector<PlanSlot>& slots, JobDecision& decision);

}  // namespace hetermoe::op
