// The attempt policy: two attempts never overlap. A whole-job restart moves
// the job to the next attempt (status.restarts); the pods of older attempts
// are deleted and waited for before the new attempt's pods are made (stop
// while any is left). Pods of a newer attempt than the status shows mean the
// job cache lags the operator's own status write: stop and come back in 1 s.
//
// Otherwise it hands on the current attempt's pods, attention before
// expert, each role by replica index (so the failure policy judges the same
// pod first every time). Pure.
#pragma once

#include <optional>
#include <vector>

#include "operator/core/job_reconcile.h"
#include "operator/core/policies/policy.h"

namespace hetermoe::op {

// nullopt: stop.
std::optional<std::vector<const ObservedPod*>> AttemptPolicy(const JobObservation& observed, JobDecision& decision);

}  // namespace hetermoe::op
