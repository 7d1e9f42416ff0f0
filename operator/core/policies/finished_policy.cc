// The finished policy: see finished_policy.h.
#include "operator/core/policies/finished_policy.h"

#include "operator/core/conditions.h"

namespace hetermoe::op {

std::vector<std::string> PodsToCleanUp(const std::vector<ObservedPod>& pods, const std::string& clean_pod_policy) {
  std::vector<std::string> names;
  if (clean_pod_policy == "None") return names;
  for (const ObservedPod& p : pods) {
    if (p.deleting) continue;
    if (clean_pod_policy == "All" || IsActive(p)) names.push_back(p.name);
  }
  return names;
}

namespace {

void CleanUp(const JobObservation& o, JobDecision& d) {
  for (std::string& name : PodsToCleanUp(o.pods, o.job.spec.run_policy.clean_pod_policy))
    d.delete_pods.push_back(std::move(name));
}

}  // namespace

Flow FinishedPolicy(const JobObservation& o, JobDecision& d) {
  const JobStatus& s = d.status;
  if (!IsFinished(s)) return Flow::kContinue;
  CleanUp(o, d);
  if (auto ttl = o.job.spec.run_policy.ttl_seconds_after_finished) {
    int64_t finished = s.completion_time ? ParseTime(*s.completion_time) : o.now;
    int64_t left = finished + *ttl - o.now;
    if (left <= 0) d.delete_job = true;
    else d.requeue_after_seconds = left;
  }
  return Flow::kStop;
}

void FinishJob(const JobObservation& o, bool succeeded, const std::string& reason, const std::string& message,
               JobDecision& d) {
  JobStatus& s = d.status;
  const std::string now = FormatTime(o.now);
  if (succeeded) {
    d.became_succeeded = SetCondition(s, kCondSucceeded, true, reason, message, now);
  } else {
    d.became_failed = SetCondition(s, kCondFailed, true, reason, message, now);
  }
  ClearCondition(s, kCondRunning, succeeded ? "JobSucceeded" : "JobFailed", "", now);
  ClearCondition(s, kCondRestarting, succeeded ? "JobSucceeded" : "JobFailed", "", now);
  if (!s.completion_time) s.completion_time = now;
  CleanUp(o, d);
  if (o.job.spec.run_policy.ttl_seconds_after_finished)
    d.requeue_after_seconds = *o.job.spec.run_policy.ttl_seconds_after_finished;
}

}  // namespace hetermoe::op
