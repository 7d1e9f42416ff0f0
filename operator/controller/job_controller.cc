// JobController: see job_controller.h.
#include "operator/controller/job_controller.h"

#include <chrono>
#include <future>

#include "operator/machinery/log.h"
#include "operator/machinery/operator_metrics.h"
#include "operator/core/children.h"
#include "operator/core/conditions.h"
#include "operator/core/job_reconcile.h"
#include "operator/core/policies/plan_policy.h"
#include "operator/core/policies/validation_policy.h"
#include "operator/kube/resource.h"

namespace hetermoe::op {

using nlohmann::json;

std::vector<std::string> JobIndexOf(const json& object) {
  const json& meta = object.at("metadata");
  if (!meta.contains("labels") || !meta["labels"].contains(kLabelJobName)) return {};
  return {meta.value("namespace", "") + "/" + meta["labels"][kLabelJobName].get<std::string>()};
}

int64_t ResourceVersionOf(const json& object) {
  try {
    size_t used = 0;
    const std::string rv = object.at("metadata").value("resourceVersion", "");
    int64_t v = std::stoll(rv, &used);
    return used == rv.size() ? v : -1;
  } catch (...) {
    return -1;
  }
}

namespace {

bool ControlledBy(const json& object, const std::string& uid) {
  for (const json& ref : object["metadata"].value("ownerReferences", json::array()))
    if (ref.value("controller", false) && ref.value("uid", "") == uid) return true;
  return false;
}

int64_t NowSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// A merge patch turning `old` into `now` at the top level of status (keys
// that disappeared become null); nested objects are written whole.
json StatusPatch(const json& old_status, const json& new_status) {
  json patch = new_status;
  if (old_status.is_object())
    for (auto it = old_status.begin(); it != old_status.end(); ++it)
      if (!new_status.contains(it.key())) patch[it.key()] = nullptr;
  return patch;
}

}  // namespace

JobController::JobController(KubeClient& client, Informers informers, const PlacementPolicy& placement,
                             Options options, OperatorMetrics* metrics)
    : client_(client),
      informers_(informers),
      placement_(placement),
      options_(std::move(options)),
      metrics_(metrics),
      queue_(RateLimits{}, metrics ? metrics->QueueHooks("hetermoejob") : WorkQueue::Hooks{}),
      loop_("hetermoejob", queue_, [this](const std::string& key) { return Reconcile(key); }, metrics) {
  informers_.jobs->AddHandler([this](const ObjectPtr& old, const ObjectPtr& now) {
    if (!now) {
      std::lock_guard<std::mutex> lock(written_mu_);
      written_.erase(ObjectKey(*old));
    }
    // Every change, our own status writes included: the decision is
    // idempotent and a write with nothing new is skipped.
    queue_.Add(ObjectKey(*(now ? now : old)));
  });
  for (Informer* children : {informers_.pods, informers_.services, informers_.config_maps}) {
    children->AddIndex("job", JobIndexOf);
    children->AddHandler([this](const ObjectPtr& old, const ObjectPtr& now) { EnqueueOwner(now ? now : old); });
  }
  informers_.nodes->AddHandler([this](const ObjectPtr& old, const ObjectPtr& now) { OnNode(old, now); });
}

void JobController::EnqueueOwner(const ObjectPtr& object) {
  for (const std::string& key : JobIndexOf(*object)) queue_.Add(key);
}

void JobController::OnNode(const ObjectPtr& old, const ObjectPtr& now) {
  bool changed = false;
  {
    std::lock_guard<std::mutex> lock(nodes_mu_);
    if (!now) {
      changed = inventory_.erase((*old)["metadata"].value("name", "")) > 0;
    } else {
      InventoryNode node = ReadInventoryNode(*now, options_.tier_rule);
      auto it = inventory_.find(node.name);
      bool usable = node.ready && node.gpu.present && node.gpus > 0;
      bool was_usable = it != inventory_.end() && it->second.ready && it->second.gpus > 0;
      changed = usable != was_usable ||
                (it != inventory_.end() && (it->second.tier != node.tier || it->second.gpus != node.gpus ||
                                            it->second.schedulable != node.schedulable));
      if (node.gpu.present) inventory_[node.name] = std::move(node);
      else if (it != inventory_.end()) inventory_.erase(it);
    }
  }
  if (!changed) return;
  // Jobs waiting for GPUs look again.
  for (const ObjectPtr& job : informers_.jobs->List()) {
    const json status = job->value("status", json::object());
    const std::string state = status.value("state", "");
    if (state.empty() || state == "Pending") queue_.Add(ObjectKey(*job));
  }
}

std::vector<InventoryNode> JobController::Nodes(const json& tolerations) {
  std::vector<InventoryNode> all;
  {
    std::lock_guard<std::mutex> lock(nodes_mu_);
    all.reserve(inventory_.size());
    for (const auto& [name, node] : inventory_) all.push_back(node);
  }
  return UsableGpuNodes(all, tolerations);
}

json JobController::Freshest(const std::string& key, const ObjectPtr& cached) {
  std::lock_guard<std::mutex> lock(written_mu_);
  auto it = written_.find(key);
  if (it == written_.end()) return *cached;
  const int64_t ours = ResourceVersionOf(it->second), theirs = ResourceVersionOf(*cached);
  if (ours > theirs && theirs >= 0 && (*cached)["metadata"].value("uid", "") == it->second["metadata"].value("uid", ""))
    return it->second;
  written_.erase(it);  // the cache caught up (or moved past us)
  return *cached;
}

void JobController::RememberWrite(const std::string& key, json written) {
  if (!written.contains("metadata")) return;
  written["metadata"].erase("managedFields");
  std::lock_guard<std::mutex> lock(written_mu_);
  written_[key] = std::move(written);
}

ReconcileResult JobController::Reconcile(const std::string& key) {
  ObjectPtr cached = informers_.jobs->Get(key);
  if (!cached) return {};
  json object = Freshest(key, cached);
  for (int attempt = 0;; ++attempt) {
    try {
      return ReconcileObject(object);
    } catch (const ApiError& e) {
      if (!e.Conflict() || attempt >= 4) throw;
      // Someone else wrote the job: read it again and decide again.
      const json& meta = object["metadata"];
      try {
        object = client_.Get(kHeterMoEJobs.Path(meta.value("namespace", ""), meta.value("name", "")));
      } catch (const ApiError& g) {
        if (g.NotFound()) return {};
        throw;
      }
    }
  }
}

// Best effort, as client-go's recorder: an Event that cannot be written is
// logged, never a reason to fail or repeat the reconcile.
void JobController::RecordEvents(const JobMeta& job, const std::vector<JobEvent>& events) {
  for (const JobEvent& e : events) {
    const int64_t nanos = std::chrono::duration_cast<std::chrono::nanoseconds>(
                              std::chrono::system_clock::now().time_since_epoch()).count();
    try {
      client_.Create(kEvents.Path(job.namespace_), EventObject(job, e, options_.identity, nanos));
    } catch (const std::exception& x) {
      LogInfo("cannot record event", {{"job", job.namespace_ + "/" + job.name}, {"reason", e.reason},
                                      {"error", x.what()}});
    }
  }
}

ReconcileResult JobController::ReconcileObject(const json& object) {
  const json& meta = object.at("metadata");
  const std::string ns = meta.value("namespace", ""), name = meta.value("name", "");
  const std::string key = ns + "/" + name;
  const std::string status_path = kHeterMoEJobs.Path(ns, name, "status");
  const json old_status_json = object.value("status", json::object());

  JobObservation o;
  try {
    o.job = ParseJob(object);
  } catch (const Error& e) {
    // A spec we cannot even read: fail it once, loudly.
    const std::optional<JobStatus> failed = StatusForUnreadableSpec(old_status_json, e.what(), NowSeconds());
    if (!failed) return {};
    json patch = {{"metadata", {{"resourceVersion", meta.value("resourceVersion", "")}}},
                  {"status", StatusPatch(old_status_json, StatusToJson(*failed))}};
    RememberWrite(key, client_.MergePatch(status_path, patch));
    if (metrics_) metrics_->JobEvent("failed", ns);
    if (options_.record_events) {
      JobMeta m;
      m.name = name;
      m.namespace_ = ns;
      m.uid = meta.value("uid", "");
      m.resource_version = meta.value("resourceVersion", "");
      RecordEvents(m, JobEvents(JobStatus{}, *failed, 0));
    }
    LogInfo("job failed", {{"job", key}, {"reason", kReasonInvalidSpec}, {"message", e.what()}});
    return {};
  }
  const HeterMoEJob& job = o.job;
  if (job.spec.run_policy.managed_by && !job.spec.run_policy.managed_by->empty() &&
      *job.spec.run_policy.managed_by != kControllerName)
    return {};

  // Read: children from the caches.
  for (const ObjectPtr& pod : informers_.pods->ByIndex("job", key)) {
    if (!ControlledBy(*pod, job.meta.uid)) continue;
    if (auto p = ObservePod(*pod)) o.pods.push_back(std::move(*p));
  }
  if (ObjectPtr svc = informers_.services->Get(key)) o.service_exists = ControlledBy(*svc, job.meta.uid);
  if (ObjectPtr cm = informers_.config_maps->Get(ns + "/" + PlanConfigMapName(name)); cm && ControlledBy(*cm, job.meta.uid))
    o.plan_config_map = *cm;
  if (job.spec.model.config) {
    o.model_config = job.spec.model.config;
  } else if (job.spec.model.config_map) {
    const ConfigMapKeyRef& ref = *job.spec.model.config_map;
    try {
      json cm = client_.Get(kConfigMaps.Path(ns, ref.name));
      const json data = cm.value("data", json::object());
      if (data.contains(ref.key)) o.model_config = data[ref.key].get<std::string>();
      else o.model_config_problem = "ConfigMap " + ref.name + " has no key " + ref.key;
    } catch (const ApiError& e) {
      if (!e.NotFound()) throw;
      o.model_config_problem = "ConfigMap " + ref.name + " not found";
    }
  }
  json tolerations = json::array();
  for (Role role : {Role::kAttention, Role::kExpert})
    for (const json& t : job.spec.role(role).template_.value("spec", json::object()).value("tolerations", json::array()))
      tolerations.push_back(t);
  // The inventory only matters when a plan is to be made (no readable plan
  // for this attempt yet); copying thousands of nodes on every reconcile would not.
  if (!KeptPlan(o.plan_config_map, CurrentAttempt(o))) o.nodes = Nodes(tolerations);
  o.now = NowSeconds();

  // Decide.
  JobDecision d = DecideJob(o, placement_);

  // Act.
  std::string act_error;
  auto attempt = [&](const std::function<void()>& action) {
    if (!act_error.empty()) return;
    try {
      action();
    } catch (const ApiError& e) {
      act_error = e.what();
    }
  };
  if (d.apply_config_map)
    attempt([&] { client_.Apply(kConfigMaps.Path(ns, PlanConfigMapName(name)), *d.apply_config_map, options_.field_manager); });
  if (d.apply_service) attempt([&] { client_.Apply(kServices.Path(ns, name), *d.apply_service, options_.field_manager); });
  if (d.apply_pod_group)
    attempt([&] {
      try {
        client_.Apply(kPodGroups.Path(ns, name), *d.apply_pod_group, options_.field_manager);
      } catch (const ApiError& e) {
        if (!e.NotFound()) throw;  // Volcano not installed: pods still carry schedulerName volcano
      }
    });
  if (act_error.empty() && !d.create_pods.empty()) {
    // Pods of one job are created concurrently (the client's QPS limit still
    // applies); the first failure is reported.
    std::vector<std::future<std::string>> creations;
    for (const json& pod : d.create_pods)
      creations.push_back(std::async(std::launch::async, [&, pod]() -> std::string {
        try {
          client_.Create(kPods.Path(ns), pod);
        } catch (const ApiError& e) {
          if (!e.AlreadyExists()) return e.what();
        }
        return "";
      }));
    for (auto& c : creations) {
      std::string error = c.get();
      if (act_error.empty()) act_error = error;
    }
  }
  for (const std::string& pod : d.delete_pods)
    attempt([&] { client_.Delete(kPods.Path(ns, pod), {{"propagationPolicy", "Background"}}); });
  if (d.delete_job && act_error.empty()) {
    client_.Delete(kHeterMoEJobs.Path(ns, name), {{"propagationPolicy", "Background"}});
    LogInfo("deleted finished job after its TTL", {{"job", key}});
    return {};
  }
  if (!act_error.empty() && !IsFinished(d.status) && !IsTrue(d.status, kCondCreated)) {
    SetCondition(d.status, kCondCreated, false, "CreateFailed", act_error, FormatTime(o.now));
    d.status.state = StateOf(d.status);
  }

  // Write: one status patch, guarded by the resourceVersion.
  json new_status_json = StatusToJson(d.status);
  if (new_status_json != StatusToJson(job.status)) {
    json patch = {{"metadata", {{"resourceVersion", job.meta.resource_version}}},
                  {"status", StatusPatch(old_status_json, new_status_json)}};
    // 409 -> Reconcile() re-reads and retries.
    RememberWrite(key, client_.MergePatch(status_path, patch));
    if (d.status.state != job.status.state)
      LogInfo("job state", {{"job", key}, {"state", d.status.state}, {"restarts", std::to_string(d.status.restarts)}});
  }
  if (options_.record_events) {
    const std::vector<JobEvent> events = JobEvents(job.status, d.status, act_error.empty() ? d.create_pods.size() : 0);
    RecordEvents(job.meta, events);
  }
  if (metrics_) {
    if (d.became_created) metrics_->JobEvent("created", ns);
    if (d.became_succeeded) metrics_->JobEvent("succeeded", ns);
    if (d.became_failed) metrics_->JobEvent("failed", ns);
    if (d.restarted) metrics_->JobEvent("restarted", ns);
  }
  if (!act_error.empty()) throw Error(act_error);
  ReconcileResult result;
  if (d.requeue_after_seconds) result.requeue_after_seconds = static_cast<double>(*d.requeue_after_seconds);
  return result;
}

}  // namespace hetermoe::op
