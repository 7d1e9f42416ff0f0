// Children of a HeterMoEJob: see children.h.
#include "operator/core/children.h"

#include <algorithm>
#include <sstream>

namespace hetermoe::op {

using nlohmann::json;

std::string PodName(const std::string& job, Role role, int64_t index) {
  return job + "-" + RoleName(role) + "-" + std::to_string(index);
}

std::string PlanConfigMapName(const std::string& job) { return job + "-plan"; }

json OwnerReference(const JobMeta& job) {
  return {{"apiVersion", kApiVersion}, {"kind", kKind},        {"name", job.name},
          {"uid", job.uid},            {"controller", true}, {"blockOwnerDeletion", true}};
}

namespace {

json ChildMetadata(const HeterMoEJob& job, const std::string& name) {
  return {{"name", name},
          {"namespace", job.meta.namespace_},
          {"labels", {{kLabelJobName, job.meta.name}}},
          {"ownerReferences", json::array({OwnerReference(job.meta)})}};
}

std::string Num(double v) {
  std::ostringstream s;
  s.precision(10);
  s << v;
  return s.str();
}

const RolePlacement& RoleOf(const PlacementDecision& p, Role role) {
  return role == Role::kAttention ? p.attention : p.expert;
}

// Adds `expr` to every required node-selector term (terms are ORed, so each
// one must carry it), creating a term when there is none.
void RequireNodeExpression(json& pod_spec, const json& expr) {
  json& required = pod_spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
  json& terms = required["nodeSelectorTerms"];
  if (!terms.is_array() || terms.empty()) terms = json::array({json::object()});
  for (json& term : terms) {
    if (!term.contains("matchExpressions")) term["matchExpressions"] = json::array();
    term["matchExpressions"].push_back(expr);
  }
}

// Puts `entry` (an EnvVar) into the container's env, replacing one of its name.
void PutEnv(json& container, const json& entry) {
  json& env = container["env"];
  if (!env.is_array()) env = json::array();
  for (json& e : env)
    if (e.value("name", "") == entry["name"]) {
      e = entry;
      return;
    }
  env.push_back(entry);
}

void SetEnv(json& container, const std::string& name, const std::string& value) {
  PutEnv(container, {{"name", name}, {"value", value}});
}

// An env var from the downward API (a pod field).
void SetFieldEnv(json& container, const std::string& name, const std::string& field_path) {
  PutEnv(container, {{"name", name}, {"valueFrom", {{"fieldRef", {{"fieldPath", field_path}}}}}});
}

// Declares a container port unless the template already names it or uses it.
void AddPort(json& container, const std::string& name, int64_t port) {
  json& ports = container["ports"];
  if (!ports.is_array()) ports = json::array();
  for (const json& p : ports)
    if (p.value("name", "") == name || p.value("containerPort", int64_t{0}) == port) return;
  ports.push_back({{"name", name}, {"containerPort", port}, {"protocol", "TCP"}});
}

}  // namespace

json BuildService(const HeterMoEJob& job) {
  json svc = {{"apiVersion", "v1"}, {"kind", "Service"}, {"metadata", ChildMetadata(job, job.meta.name)}};
  svc["spec"] = {{"clusterIP", "None"},
                 {"publishNotReadyAddresses", true},
                 {"selector", {{kLabelJobName, job.meta.name}}},
                 {"ports", json::array({{{"name", "rendezvous"},
                                         {"port", job.spec.parallel.master_port},
                                         {"targetPort", job.spec.parallel.master_port},
                                         {"protocol", "TCP"}}})}};
  return svc;
}

std::string OutputDir(const HeterMoEJob& job) {
  if (!job.spec.checkpoint.claim_name) return "/tmp/hetermoe-out";
  std::string root = job.spec.checkpoint.mount_path;
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  return root + "/" + job.meta.namespace_ + "/" + job.meta.name;
}

std::string RunFileYaml(const HeterMoEJob& job, const PlacementDecision& placement) {
  const JobSpec& spec = job.spec;
  const TrainingSpec& t = spec.training;
  const int64_t G = std::max<int64_t>(1, placement.zp_groups);
  auto quoted = [](const std::string& s) { return json(s).dump(); };  // JSON strings are YAML
  std::ostringstream y;
  y << "# Written by the HeterMoE operator from the HeterMoEJob " << job.meta.namespace_ << "/" << job.meta.name
    << " and its plan.\n"
    << "model:\n  config: config.json\n";
  if (spec.model.init) y << "  init: " << quoted(*spec.model.init) << "\n";
  y << "data:\n  train: " << quoted(t.data) << "\n  shuffle: " << (t.shuffle ? "true" : "false") << "\n";
  if (t.valid_data) y << "  valid: " << quoted(*t.valid_data) << "\n";
  if (t.tokenizer) y << "  tokenizer: " << quoted(*t.tokenizer) << "\n";
  y << "train:\n"
    << "  steps: " << t.steps << "\n"
    << "  global_batch: " << t.global_batch << "\n"
    << "  micro_batches: " << (placement.micro_batches > 0 ? placement.micro_batches : t.micro_batches) << "\n"
    << "  seq_len: " << t.seq_len << "\n"
    << "  lr: " << Num(t.lr) << "\n"
    << "  schedule: " << t.schedule << "\n"
    << "  warmup_steps: " << t.warmup_steps << "\n"
    << "  min_lr: " << Num(t.min_lr) << "\n"
    << "  betas: [" << Num(t.beta1) << ", " << Num(t.beta2) << "]\n"
    << "  eps: " << Num(t.eps) << "\n"
    << "  weight_decay: " << Num(t.weight_decay) << "\n"
    << "  grad_clip: " << Num(t.grad_clip) << "\n"
    << "  seed: " << t.seed << "\n"
    << "  device: " << (spec.attention.gpus_per_replica > 0 || spec.expert.gpus_per_replica > 0 ? "auto" : "cpu")
    << "\n  precision: " << t.precision << "\n  zero: " << t.zero << "\n  recompute: " << t.recompute
    << "\n  eval_every: " << t.eval_every << "\n  eval_batches: " << t.eval_batches << "\n"
    << "parallel:\n"
    << "  launch: env\n"
    << "  attention_ranks: " << placement.attention.replicas / G << "\n"
    << "  expert_ranks: " << placement.expert.replicas / G << "\n"
    << "  groups: " << G << "\n"
    << "  schedule: " << spec.parallel.schedule << "\n"
    << "  asym_ea: ";
  if (placement.asym_ea == "list") {
    y << "[";
    for (size_t i = 0; i < placement.asym_ea_layers.size(); ++i) y << (i ? ", " : "") << placement.asym_ea_layers[i];
    y << "]\n";
  } else {
    y << placement.asym_ea << "\n";
  }
  y << "  dedup: " << (spec.dispatch.dedup ? spec.dispatch.dedup_depth : "off") << "\n"
    << "  swap_every: " << spec.dispatch.swap_every << "\n"
    << "  transport: " << spec.dispatch.transport << "\n"
    << "  micro_batches_in_flight: " << spec.parallel.micro_batches_in_flight << "\n"
    << "  timeout_seconds: " << spec.parallel.timeout_seconds << "\n"
    << "output:\n"
    << "  dir: " << quoted(OutputDir(job)) << "\n"
    << "  checkpoint_every: " << spec.checkpoint.interval_steps << "\n"
    << "  dtype: " << spec.checkpoint.dtype << "\n";
  return y.str();
}

json BuildPlanConfigMap(const HeterMoEJob& job, const PlacementDecision& placement,
                        const std::string& model_config_text, int64_t attempt) {
  json cm = {{"apiVersion", "v1"},
             {"kind", "ConfigMap"},
             {"metadata", ChildMetadata(job, PlanConfigMapName(job.meta.name))}};
  cm["metadata"]["labels"][kLabelAttempt] = std::to_string(attempt);
  cm["data"] = {{"plan.json", PlanJson(placement, job.meta.name, attempt).dump(2)},
                {"run.yaml", RunFileYaml(job, placement)},
                {"config.json", model_config_text}};
  return cm;
}

json BuildPod(const HeterMoEJob& job, const PlacementDecision& placement, Role role, int64_t index, int64_t attempt) {
  const JobSpec& spec = job.spec;
  const RolePlacement& rp = RoleOf(placement, role);
  const int64_t rank = RankOf(placement, role, index);
  const int64_t world = placement.attention.replicas + placement.expert.replicas;
  const std::string name = PodName(job.meta.name, role, index);
  const json& tmpl = spec.role(role).template_;

  json meta = tmpl.value("metadata", json::object());
  json labels = meta.value("labels", json::object());
  labels[kLabelJobName] = job.meta.name;
  labels[kLabelRole] = RoleName(role);
  labels[kLabelReplicaIndex] = std::to_string(index);
  labels[kLabelRank] = std::to_string(rank);
  labels[kLabelAttempt] = std::to_string(attempt);
  json annotations = meta.value("annotations", json::object());
  json pod_spec = tmpl.value("spec", json::object());

  const auto& sched = spec.run_policy.scheduling_policy;
  if (sched && sched->scheduler == "volcano") {
    pod_spec["schedulerName"] = "volcano";
    annotations["scheduling.k8s.io/group-name"] = job.meta.name;
  }
  if (sched && sched->scheduler == "kueue") {
    if (sched->queue) labels["kueue.x-k8s.io/queue-name"] = *sched->queue;
    labels["kueue.x-k8s.io/pod-group-name"] = job.meta.name;
    annotations["kueue.x-k8s.io/pod-group-total-count"] = std::to_string(world);
  }
  if (sched && sched->priority_class) pod_spec["priorityClassName"] = *sched->priority_class;

  json pod = {{"apiVersion", "v1"}, {"kind", "Pod"}};
  pod["metadata"] = {{"name", name},
                     {"namespace", job.meta.namespace_},
                     {"labels", labels},
                     {"ownerReferences", json::array({OwnerReference(job.meta)})}};
  if (!annotations.empty()) pod["metadata"]["annotations"] = annotations;

  pod_spec["hostname"] = name;
  pod_spec["subdomain"] = job.meta.name;
  pod_spec["restartPolicy"] = "Never";
  if (!pod_spec.contains("containers") || !pod_spec["containers"].is_array() || pod_spec["containers"].empty())
    pod_spec["containers"] = json::array({{{"name", kTrainerContainer}}});

  // The trainer is the container named "trainer", else the first one.
  json* trainer = &pod_spec["containers"][0];
  for (json& c : pod_spec["containers"])
    if (c.value("name", "") == kTrainerContainer) trainer = &c;
  json& c = *trainer;
  if (!c.contains("image")) c["image"] = "hetermoe/trainer:latest";
  // Rank 0 writes the run's metrics and serves them (on its pod IP: $(POD_IP)
  // is expanded by the kubelet); the other ranks serve none.
  if (!c.contains("command")) {
    c["command"] = {"hetermoe-trainer", "--config", std::string(kPlanMountPath) + "/run.yaml", "--resume", "auto",
                    "--no-progress"};
    if (rank == 0) {
      for (const std::string arg : {std::string("--metrics-host"), std::string("$(POD_IP)"),
                                    std::string("--metrics-port"), std::to_string(spec.monitoring.metrics_port)})
        c["command"].push_back(arg);
      if (spec.monitoring.metrics_linger_seconds > 0) {
        c["command"].push_back("--metrics-linger");
        c["command"].push_back(std::to_string(spec.monitoring.metrics_linger_seconds));
      }
    }
  }
  if (!c.contains("terminationMessagePolicy")) c["terminationMessagePolicy"] = "FallbackToLogsOnError";
  AddPort(c, "rendezvous", spec.parallel.master_port);
  if (rank == 0) AddPort(c, "metrics", spec.monitoring.metrics_port);

  const std::string master = PodName(job.meta.name, Role::kAttention, 0) + "." + job.meta.name + "." +
                             job.meta.namespace_ + ".svc";
  SetFieldEnv(c, "POD_IP", "status.podIP");  // first: the command refers to it
  SetFieldEnv(c, "HETERMOE_NODE_NAME", "spec.nodeName");  // the ranks' nodes, for parallel.dedup node
  SetEnv(c, "MASTER_ADDR", master);
  SetEnv(c, "MASTER_PORT", std::to_string(spec.parallel.master_port));
  SetEnv(c, "WORLD_SIZE", std::to_string(world));
  SetEnv(c, "RANK", std::to_string(rank));
  SetEnv(c, "HETERMOE_ROLE", RoleName(role));
  SetEnv(c, "HETERMOE_ROLE_RANK", std::to_string(index));
  SetEnv(c, "HETERMOE_ROLE_SIZE", std::to_string(rp.replicas));
  SetEnv(c, "HETERMOE_ATTEMPT", std::to_string(attempt));
  SetEnv(c, "HETERMOE_PLAN", std::string(kPlanMountPath) + "/plan.json");

  json& mounts = c["volumeMounts"];
  if (!mounts.is_array()) mounts = json::array();
  mounts.push_back({{"name", "hetermoe-plan"}, {"mountPath", kPlanMountPath}, {"readOnly", true}});
  json& volumes = pod_spec["volumes"];
  if (!volumes.is_array()) volumes = json::array();
  volumes.push_back({{"name", "hetermoe-plan"}, {"configMap", {{"name", PlanConfigMapName(job.meta.name)}}}});
  if (spec.checkpoint.claim_name) {
    mounts.push_back({{"name", "hetermoe-checkpoint"}, {"mountPath", spec.checkpoint.mount_path}});
    volumes.push_back(
        {{"name", "hetermoe-checkpoint"}, {"persistentVolumeClaim", {{"claimName", *spec.checkpoint.claim_name}}}});
  }

  if (rp.gpus_per_replica > 0) {
    const std::string gpus = std::to_string(rp.gpus_per_replica);
    c["resources"]["limits"][kGpuResource] = gpus;
    if (c["resources"].contains("requests")) c["resources"]["requests"][kGpuResource] = gpus;
    if (!rp.gpu_products.empty())
      RequireNodeExpression(pod_spec, {{"key", kGfdProduct}, {"operator", "In"}, {"values", rp.gpu_products}});
    json& tolerations = pod_spec["tolerations"];
    if (!tolerations.is_array()) tolerations = json::array();
    tolerations.push_back({{"key", kGpuResource}, {"operator", "Exists"}, {"effect", "NoSchedule"}});
  }
  pod["spec"] = std::move(pod_spec);
  return pod;
}

json BuildPodGroup(const HeterMoEJob& job, const PlacementDecision& placement) {
  const auto& sched = job.spec.run_policy.scheduling_policy;
  const int64_t world = placement.attention.replicas + placement.expert.replicas;
  json pg = {{"apiVersion", "scheduling.volcano.sh/v1beta1"},
             {"kind", "PodGroup"},
             {"metadata", ChildMetadata(job, job.meta.name)}};
  pg["spec"] = {{"minMember", sched && sched->min_available ? *sched->min_available : world}};
  if (sched && sched->queue) pg["spec"]["queue"] = *sched->queue;
  if (sched && sched->priority_class) pg["spec"]["priorityClassName"] = *sched->priority_class;
  return pg;
}

}  // namespace hetermoe::op
