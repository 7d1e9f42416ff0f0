// The failure policy: what a lost pod of the current attempt does to the
// job. A pod is lost when it failed, or when someone else deleted or evicted
// it (the operator itself deletes pods only for a new attempt, on suspend or
// once the job finished, all decided before this policy). The first lost
// pod, attention before expert and by index, decides:
//  - its role's restartPolicy calls the failure permanent
//    (IsRetryableFailure, declared with the public API in job_reconcile.h)
//    -> Failed/PodFailed;
//  - status.restarts reached runPolicy.backoffLimit
//    -> Failed/BackoffLimitExceeded;
//  - otherwise the whole job restarts from its last checkpoint: restarts + 1
//    (the next attempt), Restarting, Running cleared and every pod of this
//    attempt deleted (the attempt policy waits them out).
// A pod is never recreated alone: the ranks of one run start together.
//
// The restart policies, by the trainer container's exit code:
//   Never: no failure is retried.      Always: every failure is.
//   OnFailure: all but 1 (the trainer's verdict that its run file, data,
//     checkpoint or plan is wrong) and 2 (its command line): a restart
//     would only repeat them.
//   ExitCode: 1-127 (the program said no) are permanent; 128-255 (a signal,
//     OOM, or the trainer's retryable 175) are retried.
// No exit code (evicted, deleted, node lost) is retried under all but Never.
// Pure.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "operator/core/job_reconcile.h"
#include "operator/core/policies/policy.h"

namespace hetermoe::op {

enum class FailureVerdict { kPermanent, kBackoffLimitExceeded, kRestart };

// `restarts` so far against `backoff_limit`, for a lost `pod` under its
// role's `restart_policy`.
FailureVerdict JudgeFailure(const std::string& restart_policy, const ObservedPod& pod, int64_t restarts,
                            int64_t backoff_limit);

// Failed, or being deleted before it succeeded.
bool IsLost(const ObservedPod& pod);

// One line for a condition: "pod <name> failed with exit code N (reason): <its error line>",
// or "pod <name> was deleted (reason)".
std::string DescribeFailure(const ObservedPod& pod);

// `current`: this attempt's pods, in the attempt policy's order.
Flow FailurePolicy(const JobObservation& observed, const std::vector<const ObservedPod*>& current,
                   JobDecision& decision);

}  // namespace hetermoe::op
