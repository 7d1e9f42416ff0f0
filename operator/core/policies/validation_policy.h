// The validation policy: a job runs only with a spec that can run. An
// invalid spec (ValidateSpec: the CRD's cross-field rules, which apiservers
// before 1.25 ignore, and the model config) fails the job at once with
// reason InvalidSpec, every problem in the message, and nothing is created.
// A spec that cannot even be read (ParseJob throws) fails the same way, once:
// StatusForUnreadableSpec, for the controller, which has no JobObservation
// then. A model config that cannot be read yet (its ConfigMap or key is
// missing) is not a failure: Created turns False (ModelConfigUnavailable)
// and the reconcile comes back in 10 s. Pure.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "operator/core/job_reconcile.h"
#include "operator/core/policies/policy.h"

namespace hetermoe::op {

inline constexpr const char* kReasonInvalidSpec = "InvalidSpec";

Flow ValidationPolicy(const JobObservation& observed, JobDecision& decision);

// The status to write for a job whose object ParseJob refused with
// `problem`: Failed/InvalidSpec from a fresh status (the old one cannot be
// trusted), completionTime `now`. nullopt when `old_status` (the object's
// status as it stands) already says Failed: it fails once.
std::optional<JobStatus> StatusForUnreadableSpec(const nlohmann::json& old_status, const std::string& problem,
                                                 int64_t now);

}  // namespace hetermoe::op
