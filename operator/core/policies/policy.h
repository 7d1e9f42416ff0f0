// What the reconcile's policies (core/policies/*_policy.h) share: how a
// policy tells DecideJob whether to go on, which attempt is current, which
// pods count as active, and how our integer labels are read. Pure.
//
// DecideJob (core/job_reconcile.cc) runs the policies in order, as jobset
// keeps one file per policy. Each policy answers one question about the job,
// writes its part of the JobDecision and returns kStop when its decision is
// the whole decision for this reconcile. A policy that hands the next ones
// something (the attempt's pods, the plan) returns it as an optional:
// nullopt means stop.
#pragma once

#include <cstdint>
#include <optional>

#include <nlohmann/json.hpp>

#include "operator/core/job_reconcile.h"

namespace hetermoe::op {

enum class Flow { kContinue, kStop };

// The attempt the job's status says runs now: its restart count (the first
// run is attempt 0). Pods and the plan ConfigMap carry it as kLabelAttempt.
int64_t CurrentAttempt(const JobObservation& observed);

// A pod that runs or is about to (Pending, Running, no phase yet) and is not
// being deleted.
bool IsActive(const ObservedPod& pod);

// The integer value of label `key` (attempt, replica index); nullopt when it
// is missing or not a whole integer.
std::optional<int64_t> IntLabel(const nlohmann::json& labels, const char* key);

}  // namespace hetermoe::op
