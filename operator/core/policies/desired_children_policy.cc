// The desired children policy: see desired_children_policy.h.
#include "operator/core/policies/desired_children_policy.h"

#include <map>
#include <string>
#include <utility>

#include "operator/core/children.h"
#include "operator/core/conditions.h"

namespace hetermoe::op {

std::vector<PlanSlot> PlanSlots(const PlacementDecision& plan, const std::vector<const ObservedPod*>& current) {
  std::map<std::pair<Role, int64_t>, const ObservedPod*> by_slot;
  for (const ObservedPod* p : current) by_slot[{p->role, p->index}] = p;
  std::vector<PlanSlot> slots;
  for (Role role : {Role::kAttention, Role::kExpert}) {
    const int64_t replicas = role == Role::kAttention ? plan.attention.replicas : plan.expert.replicas;
    for (int64_t i = 0; i < replicas; ++i) {
      auto it = by_slot.find({role, i});
      slots.push_back({role, i, it == by_slot.end() ? nullptr : it->second});
    }
  }
  return slots;
}

void DesiredChildrenPolicy(const JobObservation& o, const PlacementDecision& plan, const std::vector<PlanSlot>& slots,
                           JobDecision& d) {
  const HeterMoEJob& job = o.job;
  JobStatus& s = d.status;
  const std::string now = FormatTime(o.now);
  if (!o.service_exists) d.apply_service = BuildService(job);
  const auto& sched = job.spec.run_policy.scheduling_policy;
  if (sched && sched->scheduler == "volcano") d.apply_pod_group = BuildPodGroup(job, plan);
  for (const PlanSlot& slot : slots)
    if (!slot.pod) d.create_pods.push_back(BuildPod(job, plan, slot.role, slot.index, CurrentAttempt(o)));
  if (!d.create_pods.empty() && !s.start_time) s.start_time = now;
  if (!IsTrue(s, kCondCreated) && d.create_pods.empty()) {
    SetCondition(s, kCondCreated, true, "PodsCreated",
                 std::to_string(slots.size()) + " pods for plan: " + plan.summary, now);
    d.became_created = true;
  }
}

}  // namespace hetermoe::op
