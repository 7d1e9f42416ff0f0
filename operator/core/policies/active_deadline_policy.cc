// The active deadline policy: see active_deadline_policy.h.
#include "operator/core/policies/active_deadline_policy.h"

#include <string>

#include "operator/core/conditions.h"
#include "operator/core/policies/finished_policy.h"

namespace hetermoe::op {

Flow ActiveDeadlinePolicy(const JobObservation& o, JobDecision& d) {
  const auto deadline = o.job.spec.run_policy.active_deadline_seconds;
  if (!deadline || !d.status.start_time) return Flow::kContinue;
  int64_t left = ParseTime(*d.status.start_time) + *deadline - o.now;
  if (left <= 0) {
    FinishJob(o, false, "DeadlineExceeded",
              "active for more than runPolicy.activeDeadlineSeconds=" + std::to_string(*deadline), d);
    return Flow::kStop;
  }
  d.requeue_after_seconds = left;
  return Flow::kContinue;
}

}  // namespace hetermoe::op
