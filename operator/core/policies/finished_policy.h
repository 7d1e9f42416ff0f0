// The finished policy: a job that Succeeded or Failed only cleans up and
// expires. Its pods go per runPolicy.cleanPodPolicy (All: every pod;
// Running: those still active; None: none), and ttlSecondsAfterFinished
// after its completionTime the job itself is deleted; until then the
// reconcile comes back when the TTL is due.
//
// FinishJob is the one way a job becomes finished, for the policies that end
// it (invalid spec, active deadline, a pod's failure, every pod succeeded):
// the terminal condition, Running and Restarting cleared, completionTime,
// the same clean-up, and a requeue for the TTL. Pure.
#pragma once

#include <string>
#include <vector>

#include "operator/core/job_reconcile.h"
#include "operator/core/policies/policy.h"

namespace hetermoe::op {

Flow FinishedPolicy(const JobObservation& observed, JobDecision& decision);

void FinishJob(const JobObservation& observed, bool succeeded, const std::string& reason, const std::string& message,
               JobDecision& decision);

// The pods cleanPodPolicy deletes once the job finished (pods already being
// deleted are not asked again).
std::vector<std::string> PodsToCleanUp(const std::vector<ObservedPod>& pods, const std::string& clean_pod_policy);

}  // namespace hetermoe::op
