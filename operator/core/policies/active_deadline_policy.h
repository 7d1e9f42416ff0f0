// The active deadline policy: a job active (since status.startTime, set when
// its first pods were created, reset by a suspend) for
// runPolicy.activeDeadlineSeconds or longer fails with DeadlineExceeded,
// whatever its pods are doing; before that the reconcile comes back when the
// deadline is due. Restarts do not reset the clock. Pure.
#pragma once

#include "operator/core/job_reconcile.h"
#include "operator/core/policies/policy.h"

namespace hetermoe::op {

Flow ActiveDeadlinePolicy(const JobObservation& observed, JobDecision& decision);

}  // namespace hetermoe::op
