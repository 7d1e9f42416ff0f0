// The suspend policy: runPolicy.suspend true deletes every pod of the job
// (any attempt), marks it Suspended and no longer Running, and forgets its
// startTime, so the active deadline counts again from the resume; nothing
// else is decided while suspended. Once suspend is false again, Suspended
// turns False (Resumed) and the other policies recreate the pods; a suspend
// is not a restart (status.restarts stays). Pure.
#pragma once

#include "operator/core/job_reconcile.h"
#include "operator/core/policies/policy.h"

namespace hetermoe::op {

Flow SuspendPolicy(const JobObservation& observed, JobDecision& decision);

}  // namespace hetermoe::op
