// The job reconcile decision: see job_reconcile.h. DecideJob is the order of
// the policies; each lives in core/policies/ with its own test.
#include "operator/core/job_reconcile.h"

#include "operator/core/children.h"
#include "operator/core/conditions.h"
#include "operator/core/policies/active_deadline_policy.h"
#include "operator/core/policies/attempt_policy.h"
#include "operator/core/policies/desired_children_policy.h"
#include "operator/core/policies/failure_policy.h"
#include "operator/core/policies/finished_policy.h"
#include "operator/core/policies/plan_policy.h"
#include "operator/core/policies/policy.h"
#include "operator/core/policies/status_policy.h"
#include "operator/core/policies/suspend_policy.h"
#include "operator/core/policies/validation_policy.h"

namespace hetermoe::op {

using nlohmann::json;

namespace {

// The last non-empty line, trimmed to what a condition message can carry:
// the trainer's one-line error is its last line.
std::string LastLine(const std::string& text) {
  std::string line;
  size_t end = text.find_last_not_of(" \n\r\t");
  if (end == std::string::npos) return "";
  size_t start = text.find_last_of('\n', end);
  line = text.substr(start == std::string::npos ? 0 : start + 1, end + 1 - (start == std::string::npos ? 0 : start + 1));
  if (line.size() > 512) line = line.substr(0, 509) + "...";
  return line;
}

// The policies in order; the first that stops has the last word.
void RunPolicies(const JobObservation& o, const PlacementPolicy& placement, JobDecision& d) {
  if (o.job.meta.deletion_timestamp) return;  // being deleted: its children go with it
  if (FinishedPolicy(o, d) == Flow::kStop) return;
  if (ValidationPolicy(o, d) == Flow::kStop) return;
  CountReplicas(o.pods, CurrentAttempt(o), d.status);
  if (SuspendPolicy(o, d) == Flow::kStop) return;
  if (ActiveDeadlinePolicy(o, d) == Flow::kStop) return;
  const std::optional<std::vector<const ObservedPod*>> current = AttemptPolicy(o, d);
  if (!current) return;
  if (FailurePolicy(o, *current, d) == Flow::kStop) return;
  const std::optional<PlacementDecision> plan = PlanPolicy(o, placement, d);
  if (!plan) return;
  const std::vector<PlanSlot> slots = PlanSlots(*plan, *current);
  DesiredChildrenPolicy(o, *plan, slots, d);
  StatusFromPodsPolicy(o, slots, *current, d);
}

}  // namespace

std::optional<ObservedPod> ObservePod(const json& pod) {
  const json& meta = pod.at("metadata");
  const json labels = meta.value("labels", json::object());
  ObservedPod p;
  p.name = meta.value("name", "");
  const std::string role = labels.value(kLabelRole, "");
  if (role == "attention") p.role = Role::kAttention;
  else if (role == "expert") p.role = Role::kExpert;
  else return std::nullopt;
  auto index = IntLabel(labels, kLabelReplicaIndex);
  auto attempt = IntLabel(labels, kLabelAttempt);
  if (!index || !attempt) return std::nullopt;
  p.index = *index;
  p.attempt = *attempt;
  p.deleting = meta.contains("deletionTimestamp") && !meta["deletionTimestamp"].is_null();
  const json status = pod.value("status", json::object());
  p.phase = status.value("phase", "");
  p.reason = status.value("reason", "");
  const json statuses = status.value("containerStatuses", json::array());
  const json* trainer = nullptr;
  for (const json& c : statuses) {
    if (!trainer) trainer = &c;
    if (c.value("name", "") == kTrainerContainer) trainer = &c;
  }
  if (trainer && trainer->contains("state") && (*trainer)["state"].contains("terminated")) {
    const json& terminated = (*trainer)["state"]["terminated"];
    p.exit_code = terminated.value("exitCode", 0);
    p.message = LastLine(terminated.value("message", ""));
  }
  if (p.message.empty()) p.message = LastLine(status.value("message", ""));
  return p;
}

JobDecision DecideJob(const JobObservation& o, const PlacementPolicy& placement) {
  JobDecision d;
  d.status = o.job.status;
  d.status.observed_generation = o.job.meta.generation;
  RunPolicies(o, placement, d);
  d.status.state = StateOf(d.status);
  return d;
}

}  // namespace hetermoe::op
