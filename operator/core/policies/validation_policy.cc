// The validation policy: see validation_policy.h.
#include "operator/core/policies/validation_policy.h"

#include <vector>

#include "operator/core/conditions.h"
#include "operator/core/policies/finished_policy.h"
#include "operator/core/validation.h"

namespace hetermoe::op {

Flow ValidationPolicy(const JobObservation& o, JobDecision& d) {
  std::vector<std::string> errors = ValidateSpec(o.job.spec, o.model_config ? &*o.model_config : nullptr);
  if (!errors.empty()) {
    std::string message;
    for (const auto& e : errors) message += (message.empty() ? "" : "; ") + e;
    FinishJob(o, false, kReasonInvalidSpec, message, d);
    return Flow::kStop;
  }
  if (!o.model_config) {
    SetCondition(d.status, kCondCreated, false, "ModelConfigUnavailable", o.model_config_problem, FormatTime(o.now));
    d.requeue_after_seconds = 10;
    return Flow::kStop;
  }
  return Flow::kContinue;
}

std::optional<JobStatus> StatusForUnreadableSpec(const nlohmann::json& old_status, const std::string& problem,
                                                 int64_t now) {
  if (old_status.value("state", "") == kCondFailed) return std::nullopt;
  // Nothing is known of the job: no pods to clean up, no TTL to honour.
  JobObservation unknown;
  unknown.now = now;
  JobDecision d;
  FinishJob(unknown, false, kReasonInvalidSpec, problem, d);
  d.status.state = StateOf(d.status);
  return d.status;
}

}  // namespace hetermoe::op
