// HeterMoEJob parsing and status serialization: see hetermoejob.h.
#include "operator/api/hetermoejob.h"

#include "common/error.h"
#include "operator/api/json_reader.h"

namespace hetermoe::op {

using nlohmann::json;

const char* RoleName(Role role) { return role == Role::kAttention ? "attention" : "expert"; }

namespace {

template <typename T>
void Set(T& field, std::optional<T> value) {
  if (value) field = std::move(*value);
}

void ReadGpuSelector(JsonReader& r, GpuSelector& s) {
  s.min_compute_capability = r.String("minComputeCapability");
  s.max_compute_capability = r.String("maxComputeCapability");
  Set(s.families, r.StringArray("families"));
  Set(s.products, r.StringArray("products"));
}

void ReadRole(JsonReader& r, RoleSpec& role) {
  if (const json* replicas = r.Any("replicas")) {
    if (replicas->is_number_integer()) {
      role.replicas = replicas->get<int64_t>();
    } else if (replicas->is_string() && replicas->get<std::string>() == "auto") {
      role.replicas.reset();
    } else {
      throw Error(r.path() + ".replicas: expected an integer or \"auto\", got " + replicas->dump());
    }
  }
  Set(role.gpus_per_replica, r.Int("gpusPerReplica"));
  Set(role.restart_policy, r.String("restartPolicy"));
  r.Object("gpuSelector", [&](JsonReader& g) {
    role.gpu_selector.emplace();
    ReadGpuSelector(g, *role.gpu_selector);
  });
  if (auto t = r.Raw("template")) {
    if (!t->is_object()) throw Error(r.path() + ".template: expected an object");
    role.template_ = std::move(*t);
  }
}

void ReadModel(JsonReader& r, ModelSpec& m) {
  m.config = r.String("config");
  r.Object("configMap", [&](JsonReader& c) {
    m.config_map.emplace();
    Set(m.config_map->name, c.String("name"));
    Set(m.config_map->key, c.String("key"));
  });
  m.init = r.String("init");
}

void ReadTraining(JsonReader& r, TrainingSpec& t) {
  Set(t.data, r.String("data"));
  Set(t.shuffle, r.Bool("shuffle"));
  t.valid_data = r.String("validData");
  Set(t.eval_every, r.Int("evalEvery"));
  Set(t.eval_batches, r.Int("evalBatches"));
  t.tokenizer = r.String("tokenizer");
  Set(t.steps, r.Int("steps"));
  Set(t.global_batch, r.Int("globalBatch"));
  Set(t.micro_batches, r.Int("microBatches"));
  Set(t.seq_len, r.Int("seqLen"));
  Set(t.lr, r.Number("lr"));
  Set(t.schedule, r.String("schedule"));
  Set(t.warmup_steps, r.Int("warmupSteps"));
  Set(t.min_lr, r.Number("minLr"));
  Set(t.beta1, r.Number("beta1"));
  Set(t.beta2, r.Number("beta2"));
  Set(t.eps, r.Number("eps"));
  Set(t.weight_decay, r.Number("weightDecay"));
  Set(t.grad_clip, r.Number("gradClip"));
  Set(t.seed, r.Int("seed"));
  Set(t.precision, r.String("precision"));
  Set(t.zero, r.Int("zero"));
  Set(t.recompute, r.String("recompute"));
}

void ReadRunPolicy(JsonReader& r, RunPolicy& p) {
  Set(p.clean_pod_policy, r.String("cleanPodPolicy"));
  p.ttl_seconds_after_finished = r.Int("ttlSecondsAfterFinished");
  p.active_deadline_seconds = r.Int("activeDeadlineSeconds");
  Set(p.backoff_limit, r.Int("backoffLimit"));
  Set(p.suspend, r.Bool("suspend"));
  p.managed_by = r.String("managedBy");
  r.Object("schedulingPolicy", [&](JsonReader& s) {
    p.scheduling_policy.emplace();
    p.scheduling_policy->min_available = s.Int("minAvailable");
    p.scheduling_policy->queue = s.String("queue");
    p.scheduling_policy->priority_class = s.String("priorityClass");
    Set(p.scheduling_policy->scheduler, s.String("scheduler"));
  });
}

}  // namespace

JobSpec ParseJobSpec(const json& spec, std::set<std::string>* visited) {
  JobSpec out;
  JsonReader r(spec, "spec", visited);
  r.Object("attention", [&](JsonReader& x) { ReadRole(x, out.attention); });
  r.Object("expert", [&](JsonReader& x) { ReadRole(x, out.expert); });
  r.Object("model", [&](JsonReader& x) { ReadModel(x, out.model); });
  r.Object("training", [&](JsonReader& x) { ReadTraining(x, out.training); });
  r.Object("parallel", [&](JsonReader& x) {
    Set(out.parallel.schedule, x.String("schedule"));
    Set(out.parallel.zp_groups, x.Int("zpGroups"));
    Set(out.parallel.micro_batches_in_flight, x.Int("microBatchesInFlight"));
    Set(out.parallel.master_port, x.Int("masterPort"));
    Set(out.parallel.timeout_seconds, x.Int("timeoutSeconds"));
  });
  r.Object("dispatch", [&](JsonReader& x) {
    Set(out.dispatch.asymmetric_offload, x.Bool("asymmetricOffload"));
    Set(out.dispatch.dedup, x.Bool("dedup"));
    Set(out.dispatch.dedup_depth, x.String("dedupDepth"));
    Set(out.dispatch.swap_every, x.Int("swapEvery"));
    Set(out.dispatch.transport, x.String("transport"));
  });
  r.Object("checkpoint", [&](JsonReader& x) {
    out.checkpoint.claim_name = x.String("claimName");
    Set(out.checkpoint.mount_path, x.String("mountPath"));
    Set(out.checkpoint.interval_steps, x.Int("intervalSteps"));
    Set(out.checkpoint.dtype, x.String("dtype"));
  });
  r.Object("monitoring", [&](JsonReader& x) {
    Set(out.monitoring.metrics_port, x.Int("metricsPort"));
    Set(out.monitoring.progress_interval_seconds, x.Int("progressIntervalSeconds"));
    Set(out.monitoring.metrics_linger_seconds, x.Int("metricsLingerSeconds"));
  });
  r.Object("runPolicy", [&](JsonReader& x) { ReadRunPolicy(x, out.run_policy); });
  r.Finish();
  return out;
}

JobStatus ParseJobStatus(const json& status, std::set<std::string>* visited) {
  JobStatus out;
  JsonReader r(status, "status", visited);
  Set(out.state, r.String("state"));
  r.ObjectArray("conditions", [&](JsonReader& c) {
    Condition cond;
    Set(cond.type, c.String("type"));
    Set(cond.status, c.String("status"));
    Set(cond.reason, c.String("reason"));
    Set(cond.message, c.String("message"));
    Set(cond.last_transition_time, c.String("lastTransitionTime"));
    out.conditions.push_back(std::move(cond));
  });
  r.Object("replicaStatuses", [&](JsonReader& rs) {
    for (Role role : {Role::kAttention, Role::kExpert}) {
      ReplicaStatus& s = role == Role::kAttention ? out.attention : out.expert;
      rs.Object(RoleName(role), [&](JsonReader& x) {
        Set(s.active, x.Int("active"));
        Set(s.succeeded, x.Int("succeeded"));
        Set(s.failed, x.Int("failed"));
      });
    }
  });
  out.start_time = r.String("startTime");
  out.completion_time = r.String("completionTime");
  Set(out.restarts, r.Int("restarts"));
  Set(out.observed_generation, r.Int("observedGeneration"));
  r.Object("plan", [&](JsonReader& x) {
    PlanSummary p;
    Set(p.attention_replicas, x.Int("attentionReplicas"));
    Set(p.expert_replicas, x.Int("expertReplicas"));
    Set(p.world_size, x.Int("worldSize"));
    Set(p.attention_gpu, x.String("attentionGPU"));
    Set(p.expert_gpu, x.String("expertGPU"));
    Set(p.config_map, x.String("configMap"));
    Set(p.summary, x.String("summary"));
    Set(p.shape, x.String("shape"));
    Set(p.runner_up, x.String("runnerUp"));
    out.plan = std::move(p);
  });
  r.Object("progress", [&](JsonReader& x) {
    Progress p;
    Set(p.step, x.Int("step"));
    Set(p.total_steps, x.Int("totalSteps"));
    Set(p.percentage, x.Number("percentage"));
    p.eta_seconds = x.Number("etaSeconds");
    p.tokens_per_second = x.Number("tokensPerSecond");
    p.loss = x.Number("loss");
    p.val_loss = x.Number("valLoss");
    Set(p.update_time, x.String("updateTime"));
    out.progress = std::move(p);
  });
  r.Finish();
  return out;
}

HeterMoEJob ParseJob(const json& object, std::set<std::string>* visited) {
  HeterMoEJob job;
  const json& meta = object.at("metadata");
  job.meta.name = meta.value("name", "");
  job.meta.namespace_ = meta.value("namespace", "");
  job.meta.uid = meta.value("uid", "");
  job.meta.resource_version = meta.value("resourceVersion", "");
  job.meta.creation_timestamp = meta.value("creationTimestamp", "");
  job.meta.generation = meta.value("generation", int64_t{0});
  if (meta.contains("deletionTimestamp") && meta["deletionTimestamp"].is_string())
    job.meta.deletion_timestamp = meta["deletionTimestamp"].get<std::string>();
  try {
    job.spec = ParseJobSpec(object.value("spec", json::object()), visited);
    job.status = ParseJobStatus(object.value("status", json::object()), visited);
  } catch (const Error& e) {
    throw Error("HeterMoEJob " + job.meta.namespace_ + "/" + job.meta.name + ": " + e.what());
  }
  return job;
}

json StatusToJson(const JobStatus& s) {
  json out = json::object();
  if (!s.state.empty()) out["state"] = s.state;
  json conditions = json::array();
  for (const Condition& c : s.conditions) {
    json j = {{"type", c.type}, {"status", c.status}, {"lastTransitionTime", c.last_transition_time}};
    if (!c.reason.empty()) j["reason"] = c.reason;
    if (!c.message.empty()) j["message"] = c.message;
    conditions.push_back(std::move(j));
  }
  out["conditions"] = std::move(conditions);
  auto replica = [](const ReplicaStatus& r) {
    return json{{"active", r.active}, {"succeeded", r.succeeded}, {"failed", r.failed}};
  };
  out["replicaStatuses"] = {{"attention", replica(s.attention)}, {"expert", replica(s.expert)}};
  if (s.start_time) out["startTime"] = *s.start_time;
  if (s.completion_time) out["completionTime"] = *s.completion_time;
  out["restarts"] = s.restarts;
  out["observedGeneration"] = s.observed_generation;
  if (s.plan) {
    out["plan"] = {{"attentionReplicas", s.plan->attention_replicas},
                   {"expertReplicas", s.plan->expert_replicas},
                   {"worldSize", s.plan->world_size},
                   {"attentionGPU", s.plan->attention_gpu},
                   {"expertGPU", s.plan->expert_gpu},
                   {"configMap", s.plan->config_map},
                   {"summary", s.plan->summary}};
    if (!s.plan->shape.empty()) out["plan"]["shape"] = s.plan->shape;
    if (!s.plan->runner_up.empty()) out["plan"]["runnerUp"] = s.plan->runner_up;
  }
  if (s.progress) {
    json p = {{"step", s.progress->step}, {"totalSteps", s.progress->total_steps},
              {"percentage", s.progress->percentage}};
    if (s.progress->eta_seconds) p["etaSeconds"] = *s.progress->eta_seconds;
    if (s.progress->tokens_per_second) p["tokensPerSecond"] = *s.progress->tokens_per_second;
    if (s.progress->loss) p["loss"] = *s.progress->loss;
    if (s.progress->val_loss) p["valLoss"] = *s.progress->val_loss;
    if (!s.progress->update_time.empty()) p["updateTime"] = s.progress->update_time;
    out["progress"] = std::move(p);
  }
  return out;
}

}  // namespace hetermoe::op
