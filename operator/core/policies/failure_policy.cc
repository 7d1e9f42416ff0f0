// The failure policy: see failure_policy.h.
#include "operator/core/policies/failure_policy.h"

#include "operator/core/conditions.h"
#include "operator/core/policies/finished_policy.h"

namespace hetermoe::op {

bool IsRetryableFailure(const std::string& policy, const ObservedPod& pod) {
  if (policy == "Never") return false;
  if (policy == "Always") return true;
  if (policy == "ExitCode") return !pod.exit_code || *pod.exit_code >= 128 || *pod.exit_code == 0;
  // OnFailure.
  return !pod.exit_code || (*pod.exit_code != 1 && *pod.exit_code != 2);
}

FailureVerdict JudgeFailure(const std::string& restart_policy, const ObservedPod& pod, int64_t restarts,
                            int64_t backoff_limit) {
  if (!IsRetryableFailure(restart_policy, pod)) return FailureVerdict::kPermanent;
  if (restarts >= backoff_limit) return FailureVerdict::kBackoffLimitExceeded;
  return FailureVerdict::kRestart;
}

bool IsLost(const ObservedPod& p) { return p.phase == "Failed" || (p.deleting && p.phase != "Succeeded"); }

std::string DescribeFailure(const ObservedPod& p) {
  if (p.deleting && p.phase != "Failed")
    return "pod " + p.name + " was deleted" + (p.reason.empty() ? "" : " (" + p.reason + ")");
  std::string m = "pod " + p.name + " failed";
  if (p.exit_code) m += " with exit code " + std::to_string(*p.exit_code);
  if (!p.reason.empty()) m += " (" + p.reason + ")";
  if (!p.message.empty()) m += ": " + p.message;
  return m;
}

namespace {

void RestartJob(const JobObservation& o, const ObservedPod& lost, const std::vector<const ObservedPod*>& current,
                JobDecision& d) {
  JobStatus& s = d.status;
  const std::string now = FormatTime(o.now);
  s.restarts += 1;
  d.restarted = true;
  SetCondition(s, kCondRestarting, true, "PodFailed",
               DescribeFailure(lost) + "; restarting from the last checkpoint (restart " +
                   std::to_string(s.restarts) + " of " + std::to_string(o.job.spec.run_policy.backoff_limit) + ")",
               now);
  ClearCondition(s, kCondRunning, "Restarting", "", now);
  for (const ObservedPod* q : current)
    if (!q->deleting) d.delete_pods.push_back(q->name);
}

}  // namespace

Flow FailurePolicy(const JobObservation& o, const std::vector<const ObservedPod*>& current, JobDecision& d) {
  const RunPolicy& run = o.job.spec.run_policy;
  for (const ObservedPod* p : current) {
    if (!IsLost(*p)) continue;
    const std::string& policy = o.job.spec.role(p->role).restart_policy;
    switch (JudgeFailure(policy, *p, d.status.restarts, run.backoff_limit)) {
      case FailureVerdict::kPermanent:
        FinishJob(o, false, "PodFailed", DescribeFailure(*p) + " (restartPolicy " + policy + ")", d);
        break;
      case FailureVerdict::kBackoffLimitExceeded:
        FinishJob(o, false, "BackoffLimitExceeded",
                  DescribeFailure(*p) + "; " + std::to_string(d.status.restarts) +
                      " restart(s) reached runPolicy.backoffLimit",
                  d);
        break;
      case FailureVerdict::kRestart:
        RestartJob(o, *p, current, d);
        break;
    }
    return Flow::kStop;
  }
  return Flow::kContinue;
}

}  // namespace hetermoe::op
