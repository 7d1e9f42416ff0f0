// The job reconcile decision: see job_reconcile.h.
#include "operator/core/job_reconcile.h"

#include <algorithm>
#include <map>

#include "operator/core/children.h"
#include "operator/core/conditions.h"
#include "operator/core/progress.h"
#include "operator/core/validation.h"

namespace hetermoe::op {

using nlohmann::json;

namespace {

std::optional<int64_t> LabelInt(const json& labels, const char* key) {
  if (!labels.contains(key) || !labels[key].is_string()) return std::nullopt;
  try {
    size_t used = 0;
    const std::string s = labels[key].get<std::string>();
    int64_t v = std::stoll(s, &used);
    if (used != s.size()) return std::nullopt;
    return v;
  } catch (...) {
    return std::nullopt;
  }
}

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

bool IsActive(const ObservedPod& p) { return !p.deleting && (p.phase == "Pending" || p.phase == "Running" || p.phase.empty()); }

// Pods to delete for cleanPodPolicy once the job finished.
void CleanUp(const JobObservation& o, JobDecision& d) {
  const std::string& policy = o.job.spec.run_policy.clean_pod_policy;
  if (policy == "None") return;
  for (const ObservedPod& p : o.pods) {
    if (p.deleting) continue;
    if (policy == "All" || IsActive(p)) d.delete_pods.push_back(p.name);
  }
}

void CountReplicas(const std::vector<ObservedPod>& pods, int64_t attempt, JobStatus& s) {
  s.attention = {};
  s.expert = {};
  for (const ObservedPod& p : pods) {
    if (p.attempt != attempt) continue;
    ReplicaStatus& r = p.role == Role::kAttention ? s.attention : s.expert;
    if (p.phase == "Succeeded") ++r.succeeded;
    else if (p.phase == "Failed") ++r.failed;
    else if (IsActive(p)) ++r.active;
  }
}

void Finish(const JobObservation& o, JobDecision& d, bool success, const std::string& reason,
            const std::string& message, const std::string& now) {
  JobStatus& s = d.status;
  if (success) {
    d.became_succeeded = SetCondition(s, kCondSucceeded, true, reason, message, now);
  } else {
    d.became_failed = SetCondition(s, kCondFailed, true, reason, message, now);
  }
  ClearCondition(s, kCondRunning, success ? "JobSucceeded" : "JobFailed", "", now);
  ClearCondition(s, kCondRestarting, success ? "JobSucceeded" : "JobFailed", "", now);
  if (!s.completion_time) s.completion_time = now;
  CleanUp(o, d);
  if (o.job.spec.run_policy.ttl_seconds_after_finished)
    d.requeue_after_seconds = *o.job.spec.run_policy.ttl_seconds_after_finished;
}

std::string DescribeFailure(const ObservedPod& p) {
  if (p.deleting && p.phase != "Failed") return "pod " + p.name + " was deleted" + (p.reason.empty() ? "" : " (" + p.reason + ")");
  std::string m = "pod " + p.name + " failed";
  if (p.exit_code) m += " with exit code " + std::to_string(*p.exit_code);
  if (!p.reason.empty()) m += " (" + p.reason + ")";
  if (!p.message.empty()) m += ": " + p.message;
  return m;
}

// A pod of the current attempt that failed, or that someone else deleted
// or evicted (the operator deletes pods only after moving to a new attempt,
// on suspend or once the job finished, all handled before this is asked).
bool IsLost(const ObservedPod& p) { return p.phase == "Failed" || (p.deleting && p.phase != "Succeeded"); }

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
  auto index = LabelInt(labels, kLabelReplicaIndex);
  auto attempt = LabelInt(labels, kLabelAttempt);
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

bool IsRetryableFailure(const std::string& policy, const ObservedPod& pod) {
  if (policy == "Never") return false;
  if (policy == "Always") return true;
  if (policy == "ExitCode") {
    // 1-127: the program said no (permanent); 128-255: killed by a signal or
    // OOM, or the trainer's retryable 175 (retryable); no exit code: evicted,
    // deleted or lost node (retryable).
    return !pod.exit_code || *pod.exit_code >= 128 || *pod.exit_code == 0;
  }
  // OnFailure: every failure but the trainer's own verdict that the input is
  // wrong (1: run file, data, checkpoint or plan; 2: command line), which a
  // restart would only repeat.
  return !pod.exit_code || (*pod.exit_code != 1 && *pod.exit_code != 2);
}

JobDecision DecideJob(const JobObservation& o, const Placement& placement) {
  const HeterMoEJob& job = o.job;
  const JobSpec& spec = job.spec;
  const std::string now = FormatTime(o.now);
  JobDecision d;
  d.status = job.status;
  JobStatus& s = d.status;
  s.observed_generation = job.meta.generation;
  auto done = [&]() -> JobDecision& {
    s.state = StateOf(s);
    return d;
  };
  if (job.meta.deletion_timestamp) return done();

  // 1. Finished: clean up, expire.
  if (IsFinished(s)) {
    CleanUp(o, d);
    if (auto ttl = spec.run_policy.ttl_seconds_after_finished) {
      int64_t finished = s.completion_time ? ParseTime(*s.completion_time) : o.now;
      int64_t left = finished + *ttl - o.now;
      if (left <= 0) d.delete_job = true;
      else d.requeue_after_seconds = left;
    }
    return done();
  }

  // 2. Validate.
  std::vector<std::string> errors = ValidateSpec(spec, o.model_config ? &*o.model_config : nullptr);
  if (!errors.empty()) {
    std::string message;
    for (const auto& e : errors) message += (message.empty() ? "" : "; ") + e;
    Finish(o, d, false, "InvalidSpec", message, now);
    return done();
  }
  if (!o.model_config) {
    SetCondition(s, kCondCreated, false, "ModelConfigUnavailable", o.model_config_problem, now);
    d.requeue_after_seconds = 10;
    return done();
  }

  const int64_t attempt = s.restarts;
  CountReplicas(o.pods, attempt, s);

  // 3. Suspend / resume.
  if (spec.run_policy.suspend) {
    for (const ObservedPod& p : o.pods)
      if (!p.deleting) d.delete_pods.push_back(p.name);
    SetCondition(s, kCondSuspended, true, "Suspended", "runPolicy.suspend is true; pods deleted", now);
    ClearCondition(s, kCondRunning, "Suspended", "", now);
    s.start_time.reset();  // the active deadline counts from the resume
    return done();
  }
  if (IsTrue(s, kCondSuspended)) SetCondition(s, kCondSuspended, false, "Resumed", "runPolicy.suspend is false", now);

  // 4. Active deadline.
  if (auto deadline = spec.run_policy.active_deadline_seconds; deadline && s.start_time) {
    int64_t left = ParseTime(*s.start_time) + *deadline - o.now;
    if (left <= 0) {
      Finish(o, d, false, "DeadlineExceeded",
             "active for more than runPolicy.activeDeadlineSeconds=" + std::to_string(*deadline), now);
      return done();
    }
    d.requeue_after_seconds = left;
  }

  // 5. Attempts: wait for a lagging cache; delete and wait out older pods.
  std::vector<const ObservedPod*> current;
  bool old_pods = false;
  for (const ObservedPod& p : o.pods) {
    if (p.attempt > attempt) {
      d.requeue_after_seconds = 1;
      return done();
    }
    if (p.attempt < attempt) {
      old_pods = true;
      if (!p.deleting) d.delete_pods.push_back(p.name);
    } else {
      current.push_back(&p);
    }
  }
  if (old_pods) return done();

  // 6. Failures of this attempt.
  std::sort(current.begin(), current.end(), [](const ObservedPod* a, const ObservedPod* b) {
    return std::make_pair(static_cast<int>(a->role), a->index) < std::make_pair(static_cast<int>(b->role), b->index);
  });
  for (const ObservedPod* p : current) {
    if (!IsLost(*p)) continue;
    const std::string& policy = spec.role(p->role).restart_policy;
    if (!IsRetryableFailure(policy, *p)) {
      Finish(o, d, false, "PodFailed", DescribeFailure(*p) + " (restartPolicy " + policy + ")", now);
      return done();
    }
    if (s.restarts >= spec.run_policy.backoff_limit) {
      Finish(o, d, false, "BackoffLimitExceeded",
             DescribeFailure(*p) + "; " + std::to_string(s.restarts) + " restart(s) reached runPolicy.backoffLimit", now);
      return done();
    }
    s.restarts += 1;
    d.restarted = true;
    SetCondition(s, kCondRestarting, true, "PodFailed",
                 DescribeFailure(*p) + "; restarting from the last checkpoint (restart " +
                     std::to_string(s.restarts) + " of " + std::to_string(spec.run_policy.backoff_limit) + ")",
                 now);
    ClearCondition(s, kCondRunning, "Restarting", "", now);
    for (const ObservedPod* q : current)
      if (!q->deleting) d.delete_pods.push_back(q->name);
    return done();
  }

  // 7. The plan: kept in the ConfigMap for the attempt, made otherwise.
  PlacementDecision plan;
  bool have_plan = false;
  if (o.plan_config_map) {
    const json& cm = *o.plan_config_map;
    auto cm_attempt = LabelInt(cm["metadata"].value("labels", json::object()), kLabelAttempt);
    if (cm_attempt && *cm_attempt == attempt && cm.contains("data") && cm["data"].contains("plan.json")) {
      try {
        plan = PlacementFromPlanJson(json::parse(cm["data"]["plan.json"].get<std::string>()));
        have_plan = true;
      } catch (const std::exception&) {
        // An unreadable plan is replaced below.
      }
    }
  }
  if (!have_plan) {
    PlacementRequest request;
    request.spec = &spec;
    request.model = io::ParseMixtralConfigText(*o.model_config, "spec.model");
    request.nodes = o.nodes;
    try {
      plan = placement.Place(request);
      FinishEnginePlan(spec, request.model, plan);
    } catch (const PlacementError& e) {
      SetCondition(s, kCondCreated, false, "Unschedulable", e.what(), now);
      d.requeue_after_seconds = 30;
      return done();
    }
    d.apply_config_map = BuildPlanConfigMap(job, plan, *o.model_config, attempt);
  }
  s.plan = PlanSummary{plan.attention.replicas,
                       plan.expert.replicas,
                       plan.attention.replicas + plan.expert.replicas,
                       plan.attention.gpu_products.empty() ? "cpu" : plan.attention.gpu_products.front(),
                       plan.expert.gpu_products.empty() ? "cpu" : plan.expert.gpu_products.front(),
                       PlanConfigMapName(job.meta.name),
                       plan.summary};

  // 8. Create what is missing.
  if (!o.service_exists) d.apply_service = BuildService(job);
  const auto& sched = spec.run_policy.scheduling_policy;
  if (sched && sched->scheduler == "volcano") d.apply_pod_group = BuildPodGroup(job, plan);
  std::map<std::pair<int, int64_t>, const ObservedPod*> by_slot;
  for (const ObservedPod* p : current) by_slot[{static_cast<int>(p->role), p->index}] = p;
  int64_t expected = 0, running = 0, succeeded = 0;
  for (Role role : {Role::kAttention, Role::kExpert}) {
    int64_t replicas = role == Role::kAttention ? plan.attention.replicas : plan.expert.replicas;
    for (int64_t i = 0; i < replicas; ++i) {
      ++expected;
      auto it = by_slot.find({static_cast<int>(role), i});
      if (it == by_slot.end()) {
        d.create_pods.push_back(BuildPod(job, plan, role, i, attempt));
        continue;
      }
      if (it->second->deleting) continue;
      if (it->second->phase == "Running") ++running;
      if (it->second->phase == "Succeeded") ++succeeded;
    }
  }
  if (!d.create_pods.empty() && !s.start_time) s.start_time = now;
  // Created means the pods exist (seen in the cache), not that we asked.
  if (!IsTrue(s, kCondCreated) && d.create_pods.empty()) {
    SetCondition(s, kCondCreated, true, "PodsCreated", std::to_string(expected) + " pods for plan: " + plan.summary,
                 now);
    d.became_created = true;
  }

  // 9. Status from the pods.
  if (expected > 0 && succeeded == expected) {
    // Rank 0's summary outlives its metrics endpoint: the last step and loss.
    for (const ObservedPod* p : current)
      if (p->role == Role::kAttention && p->index == 0)
        if (auto final = ProgressFromSummary(p->message, spec.training, now)) s.progress = final;
    Finish(o, d, true, "AllPodsSucceeded", "all " + std::to_string(expected) + " pods succeeded", now);
    return done();
  }
  if (running > 0 && running + succeeded == expected) {
    SetCondition(s, kCondRunning, true, "AllPodsRunning", std::to_string(running) + " pods running", now);
    ClearCondition(s, kCondRestarting, "Running", "", now);
  } else if (IsTrue(s, kCondRunning)) {
    SetCondition(s, kCondRunning, false, "PodsNotRunning",
                 std::to_string(running) + " of " + std::to_string(expected) + " pods running", now);
  }
  return done();
}

}  // namespace hetermoe::op
