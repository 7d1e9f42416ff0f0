// The attempt policy: see attempt_policy.h.
#include "operator/core/policies/attempt_policy.h"

#include <algorithm>
#include <utility>

namespace hetermoe::op {

std::optional<std::vector<const ObservedPod*>> AttemptPolicy(const JobObservation& o, JobDecision& d) {
  const int64_t attempt = CurrentAttempt(o);
  std::vector<const ObservedPod*> current;
  bool old_pods = false;
  for (const ObservedPod& p : o.pods) {
    if (p.attempt > attempt) {
      d.requeue_after_seconds = 1;
      return std::nullopt;
    }
    if (p.attempt < attempt) {
      old_pods = true;
      if (!p.deleting) d.delete_pods.push_back(p.name);
    } else {
      current.push_back(&p);
    }
  }
  if (old_pods) return std::nullopt;
  std::sort(current.begin(), current.end(), [](const ObservedPod* a, const ObservedPod* b) {
    return std::make_pair(static_cast<int>(a->role), a->index) < std::make_pair(static_cast<int>(b->role), b->index);
  });
  return current;
}

}  // namespace hetermoe::op
