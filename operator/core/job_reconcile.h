// The job reconcile decision: given what the caches show (the job, its pods,
// its Service and plan ConfigMap, the usable GPU nodes), decide what to
// create and delete and what the status becomes. No I/O: the controller
// (controller/job_controller.cc) gathers the inputs and carries out the
// decision, ending with one status write.
//
// Order, as in jobset's controller: finished jobs only clean up and expire
// (TTL); then the spec is validated (invalid -> Failed/InvalidSpec, nothing
// created); suspend deletes the pods; the active deadline fails the job;
// pods of an older attempt are deleted and waited for (a whole-job restart
// never overlaps two attempts); a failed pod either restarts the job from its
// last checkpoint (up to backoffLimit) or fails it, per the role's restart
// policy; then the plan is made (kept in the ConfigMap, so it is stable for
// an attempt), missing children are created and the status follows the pods.
// Each step is one policy in core/policies/, in that order: finished_policy,
// validation_policy, suspend_policy, active_deadline_policy, attempt_policy,
// failure_policy, plan_policy, desired_children_policy, status_policy.
//
// Pods are named deterministically, so creating one that exists is a no-op
// (409 AlreadyExists) and a restarted operator never duplicates work. Pods
// carrying a newer attempt than the job's status mean the job cache lags our
// own write: the decision is then to wait.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "operator/api/hetermoejob.h"
#include "operator/core/node_inventory.h"
#include "operator/core/placement.h"

namespace hetermoe::op {

struct ObservedPod {
  std::string name;
  Role role = Role::kAttention;
  int64_t index = 0;
  int64_t attempt = 0;
  std::string phase;              // Pending | Running | Succeeded | Failed | Unknown
  bool deleting = false;          // deletionTimestamp set
  std::optional<int> exit_code;   // trainer container's exit code, when terminated
  std::string reason;             // pod status reason (Evicted, ...)
  std::string message;            // the trainer's termination message (its error line), else the pod's
};
// Reads a Pod object; nullopt when it lacks our role/index/attempt labels.
std::optional<ObservedPod> ObservePod(const nlohmann::json& pod);

struct JobObservation {
  HeterMoEJob job;
  std::vector<ObservedPod> pods;            // pods controlled by this job
  bool service_exists = false;
  std::optional<nlohmann::json> plan_config_map;
  std::optional<std::string> model_config;  // resolved config.json text
  std::string model_config_problem;         // why it could not be resolved
  std::vector<InventoryNode> nodes;         // usable GPU nodes
  int64_t now = 0;                          // unix seconds
};

struct JobDecision {
  JobStatus status;
  std::optional<nlohmann::json> apply_service;
  std::optional<nlohmann::json> apply_config_map;
  std::optional<nlohmann::json> apply_pod_group;
  std::vector<nlohmann::json> create_pods;
  std::vector<std::string> delete_pods;
  bool delete_job = false;
  std::optional<int64_t> requeue_after_seconds;
  // Transitions, for the hetermoe_jobs_*_total counters.
  bool became_created = false, became_succeeded = false, became_failed = false, restarted = false;
};

JobDecision DecideJob(const JobObservation& observed, const PlacementPolicy& placement);

// Whether a failed pod's failure restarts the job under `restart_policy`
// (Never | OnFailure | ExitCode | Always; see core/policies/failure_policy.h).
bool IsRetryableFailure(const std::string& restart_policy, const ObservedPod& pod);

}  // namespace hetermoe::op
