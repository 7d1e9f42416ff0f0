// The suspend policy: see suspend_policy.h.
#include "operator/core/policies/suspend_policy.h"

#include "operator/core/conditions.h"

namespace hetermoe::op {

Flow SuspendPolicy(const JobObservation& o, JobDecision& d) {
  JobStatus& s = d.status;
  const std::string now = FormatTime(o.now);
  if (o.job.spec.run_policy.suspend) {
    for (const ObservedPod& p : o.pods)
      if (!p.deleting) d.delete_pods.push_back(p.name);
    SetCondition(s, kCondSuspended, true, "Suspended", "runPolicy.suspend is true; pods deleted", now);
    ClearCondition(s, kCondRunning, "Suspended", "", now);
    s.start_time.reset();
    return Flow::kStop;
  }
  if (IsTrue(s, kCondSuspended)) SetCondition(s, kCondSuspended, false, "Resumed", "runPolicy.suspend is false", now);
  return Flow::kContinue;
}

}  // namespace hetermoe::op
