// Spec validation: see validation.h. Each rule names the CRD rule it mirrors.
#include "operator/core/validation.h"

#include <set>

#include "common/error.h"
#include "common/mixtral_config.h"
#include "common/schedule.h"
#include "operator/core/gpu_classification.h"

namespace hetermoe::op {

namespace {

void ValidateRole(const RoleSpec& role, const std::string& path, std::vector<std::string>& errors) {
  static const std::set<std::string> kPolicies = {"Always", "OnFailure", "Never", "ExitCode"};
  static const std::set<std::string> kFamilies = {"volta", "turing", "ampere", "ada-lovelace", "hopper", "blackwell"};
  if (role.replicas && (*role.replicas < 1 || *role.replicas > 4096))
    errors.push_back(path + ".replicas: must be 1..4096 or \"auto\"");
  if (role.gpus_per_replica < 0 || role.gpus_per_replica > 1)
    errors.push_back(path + ".gpusPerReplica: must be 0 or 1 (one rank per pod)");
  if (!kPolicies.count(role.restart_policy))
    errors.push_back(path + ".restartPolicy: must be Always, OnFailure, Never or ExitCode");
  if (!role.replicas && role.gpus_per_replica == 0)
    errors.push_back(path + ".replicas: \"auto\" needs gpusPerReplica > 0");
  if (role.gpu_selector) {
    const GpuSelector& s = *role.gpu_selector;
    if (role.gpus_per_replica == 0) errors.push_back(path + ".gpuSelector: needs gpusPerReplica > 0");
    std::optional<ComputeCapability> min, max;
    if (s.min_compute_capability && !(min = ParseComputeCapability(*s.min_compute_capability)))
      errors.push_back(path + ".gpuSelector.minComputeCapability: must look like \"8.0\"");
    if (s.max_compute_capability && !(max = ParseComputeCapability(*s.max_compute_capability)))
      errors.push_back(path + ".gpuSelector.maxComputeCapability: must look like \"8.0\"");
    if (min && max && min->Tenths() > max->Tenths())
      errors.push_back(path + ".gpuSelector: minComputeCapability must not exceed maxComputeCapability");
    for (const auto& f : s.families)
      if (!kFamilies.count(f)) errors.push_back(path + ".gpuSelector.families: unknown family \"" + f + "\"");
  }
  if (!role.template_.is_object()) errors.push_back(path + ".template: must be an object");
}

}  // namespace

std::vector<std::string> ValidateSpec(const JobSpec& spec, const std::string* model_config_text) {
  std::vector<std::string> errors;
  ValidateRole(spec.attention, "spec.attention", errors);
  ValidateRole(spec.expert, "spec.expert", errors);

  const ModelSpec& m = spec.model;
  if (m.config.has_value() == m.config_map.has_value())
    errors.push_back("spec.model: exactly one of model.config and model.configMap must be set");
  if (m.config_map && m.config_map->name.empty()) errors.push_back("spec.model.configMap.name: required");
  if (model_config_text) {
    try {
      io::MixtralConfig config = io::ParseMixtralConfigText(*model_config_text, "spec.model.config");
      if (spec.expert.replicas && *spec.expert.replicas > config.num_local_experts)
        errors.push_back("spec.expert.replicas: " + std::to_string(*spec.expert.replicas) +
                         " expert ranks but the model has " + std::to_string(config.num_local_experts) +
                         " experts per layer");
      if (spec.training.seq_len > config.max_position_embeddings)
        errors.push_back("spec.training.seqLen: exceeds the model's max_position_embeddings");
    } catch (const Error& e) {
      errors.push_back(e.what());
    }
  }

  const TrainingSpec& t = spec.training;
  if (t.data.empty()) errors.push_back("spec.training.data: required");
  if (t.steps < 1) errors.push_back("spec.training.steps: must be >= 1");
  if (t.global_batch < 1) errors.push_back("spec.training.globalBatch: must be >= 1");
  if (t.seq_len < 1) errors.push_back("spec.training.seqLen: must be >= 1");
  if (t.micro_batches < 1) errors.push_back("spec.training.microBatches: must be >= 1");
  else if (t.global_batch >= 1 && t.global_batch % t.micro_batches != 0)
    errors.push_back("spec.training: microBatches must divide globalBatch");
  if (t.warmup_steps < 0 || t.warmup_steps > t.steps)
    errors.push_back("spec.training: warmupSteps must not exceed steps");
  if (!(t.lr > 0)) errors.push_back("spec.training.lr: must be > 0");
  if (t.min_lr < 0 || t.min_lr > t.lr) errors.push_back("spec.training: minLr must not exceed lr");
  if (t.schedule != "constant" && t.schedule != "cosine")
    errors.push_back("spec.training.schedule: must be constant or cosine");
  if (t.precision != "auto" && t.precision != "fp32" && t.precision != "bf16" && t.precision != "fp16")
    errors.push_back("spec.training.precision: must be auto, fp32, bf16 or fp16");
  if (t.zero != 0 && t.zero != 1) errors.push_back("spec.training.zero: must be 0 or 1");
  if (t.recompute != "none" && t.recompute != "attention" && t.recompute != "experts" && t.recompute != "full")
    errors.push_back("spec.training.recompute: must be none, attention, experts or full");
  if (t.eval_every < 0) errors.push_back("spec.training.evalEvery: must be >= 0");
  if (t.eval_every > 0 && !t.valid_data) errors.push_back("spec.training.evalEvery: needs validData");
  if (t.eval_batches < 1) errors.push_back("spec.training.evalBatches: must be >= 1");
  if (t.valid_data && t.valid_data->empty()) errors.push_back("spec.training.validData: must not be empty");
  if (t.tokenizer && t.tokenizer->empty()) errors.push_back("spec.training.tokenizer: must not be empty");
  const std::string& transport = spec.dispatch.transport;
  if (transport != "auto" && transport != "nccl" && transport != "gloo")
    errors.push_back("spec.dispatch.transport: must be auto, nccl or gloo");
  if (transport == "nccl" && (spec.attention.gpus_per_replica < 1 || spec.expert.gpus_per_replica < 1))
    errors.push_back("spec.dispatch.transport: nccl needs a GPU in every pod (gpusPerReplica >= 1 for both roles)");

  if (spec.parallel.master_port < 1 || spec.parallel.master_port > 65535)
    errors.push_back("spec.parallel.masterPort: must be 1..65535");
  if (!ScheduleFromName(spec.parallel.schedule))
    errors.push_back("spec.parallel.schedule: must be zebra, sequential or ep");
  if (spec.parallel.zp_groups < 0) errors.push_back("spec.parallel.zpGroups: must be >= 0");
  if (spec.parallel.micro_batches_in_flight < 0)
    errors.push_back("spec.parallel.microBatchesInFlight: must be >= 0");
  if (spec.parallel.timeout_seconds < 1) errors.push_back("spec.parallel.timeoutSeconds: must be >= 1");
  if (spec.monitoring.metrics_port < 1 || spec.monitoring.metrics_port > 65535)
    errors.push_back("spec.monitoring.metricsPort: must be 1..65535");
  if (spec.monitoring.metrics_linger_seconds < 0)
    errors.push_back("spec.monitoring.metricsLingerSeconds: must be >= 0");
  if (spec.monitoring.progress_interval_seconds < 0)
    errors.push_back("spec.monitoring.progressIntervalSeconds: must be >= 0");
  if (spec.checkpoint.interval_steps < 0) errors.push_back("spec.checkpoint.intervalSteps: must be >= 0");
  if (spec.checkpoint.dtype != "auto" && spec.checkpoint.dtype != "fp32" && spec.checkpoint.dtype != "bf16")
    errors.push_back("spec.checkpoint.dtype: must be auto, fp32 or bf16");
  if (spec.checkpoint.interval_steps > 0 && !spec.checkpoint.claim_name)
    errors.push_back("spec.checkpoint: intervalSteps needs claimName");

  const RunPolicy& p = spec.run_policy;
  if (p.clean_pod_policy != "All" && p.clean_pod_policy != "Running" && p.clean_pod_policy != "None")
    errors.push_back("spec.runPolicy.cleanPodPolicy: must be All, Running or None");
  if (p.backoff_limit < 0) errors.push_back("spec.runPolicy.backoffLimit: must be >= 0");
  if (p.active_deadline_seconds && *p.active_deadline_seconds < 1)
    errors.push_back("spec.runPolicy.activeDeadlineSeconds: must be >= 1");
  if (p.ttl_seconds_after_finished && *p.ttl_seconds_after_finished < 0)
    errors.push_back("spec.runPolicy.ttlSecondsAfterFinished: must be >= 0");
  if (p.scheduling_policy) {
    const SchedulingPolicy& s = *p.scheduling_policy;
    if (s.scheduler != "default" && s.scheduler != "volcano" && s.scheduler != "kueue")
      errors.push_back("spec.runPolicy.schedulingPolicy.scheduler: must be default, volcano or kueue");
    if (s.scheduler == "default" && s.queue)
      errors.push_back("spec.runPolicy.schedulingPolicy: queue needs scheduler volcano or kueue");
    if (s.min_available && *s.min_available < 1)
      errors.push_back("spec.runPolicy.schedulingPolicy.minAvailable: must be >= 1");
  }
  return errors;
}

}  // namespace hetermoe::op
