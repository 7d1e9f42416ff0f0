// Status from the pods: see status_policy.h.
#include "operator/core/policies/status_policy.h"

#include <string>

#include "operator/core/conditions.h"
#include "operator/core/policies/finished_policy.h"
#include "operator/core/progress.h"

namespace hetermoe::op {

void CountReplicas(const std::vector<ObservedPod>& pods, int64_t attempt, JobStatus& s) {
  s.attention = {};
  s.expert = {};
  for (const ObservedPod& p : pods) {
    if (p.attempt != attempt) continue;
    ReplicaStatus& r = p.role == Role::kAttention ? s.attention : s.expert;
    if (p.phase == "Succeeded") ++r.succeeded;
    else if (p.phase == "Failed") ++r.failed;
    else if (IsActive(p)) ++r.active;
  }
}

void StatusFromPodsPolicy(const JobObservation& o, const std::vector<PlanSlot>& slots,
                          const std::vector<const ObservedPod*>& current, JobDecision& d) {
  JobStatus& s = d.status;
  const std::string now = FormatTime(o.now);
  const int64_t expected = static_cast<int64_t>(slots.size());
  int64_t running = 0, succeeded = 0;
  for (const PlanSlot& slot : slots) {
    if (!slot.pod || slot.pod->deleting) continue;
    if (slot.pod->phase == "Running") ++running;
    if (slot.pod->phase == "Succeeded") ++succeeded;
  }
  if (expected > 0 && succeeded == expected) {
    for (const ObservedPod* p : current)
      if (p->role == Role::kAttention && p->index == 0)
        if (auto final = ProgressFromSummary(p->message, o.job.spec.training, now)) s.progress = final;
    FinishJob(o, true, "AllPodsSucceeded", "all " + std::to_string(expected) + " pods succeeded", d);
    return;
  }
  if (running > 0 && running + succeeded == expected) {
    SetCondition(s, kCondRunning, true, "AllPodsRunning", std::to_string(running) + " pods running", now);
    ClearCondition(s, kCondRestarting, "Running", "", now);
  } else if (IsTrue(s, kCondRunning)) {
    SetCondition(s, kCondRunning, false, "PodsNotRunning",
                 std::to_string(running) + " of " + std::to_string(expected) + " pods running", now);
  }
}

}  // namespace hetermoe::op
