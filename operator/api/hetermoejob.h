// HeterMoEJob (hetermoe.io/v1alpha1): the custom resource the operator serves.
//
// These structs are the operator's view of the CRD in
// crds/hetermoe.io_hetermoejobs.yaml; every field is documented there (the
// CRD is what users read with `kubectl explain`). The drift test
// (tests/operator/crd_drift_test.cc) fails when the two disagree: every path
// ParseJob reads must be in the schema, and a document holding every schema
// field must parse with nothing left over.
//
// Parsing is strict (unknown spec fields are errors) and does not validate
// cross-field rules: that is validation.h. Values are plain data; copy freely.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace hetermoe::op {

inline constexpr const char* kGroup = "hetermoe.io";
inline constexpr const char* kVersion = "v1alpha1";
inline constexpr const char* kApiVersion = "hetermoe.io/v1alpha1";
inline constexpr const char* kKind = "HeterMoEJob";
inline constexpr const char* kPlural = "hetermoejobs";
// The value of runPolicy.managedBy that this operator answers to (empty = us too).
inline constexpr const char* kControllerName = "hetermoe.io/operator";

enum class Role { kAttention, kExpert };
const char* RoleName(Role role);  // "attention" | "expert"

struct GpuSelector {
  std::optional<std::string> min_compute_capability;  // "8.0"
  std::optional<std::string> max_compute_capability;
  std::vector<std::string> families;   // GFD family names: volta, ampere, ...
  std::vector<std::string> products;   // GFD product strings: NVIDIA-A40, ...
};

struct RoleSpec {
  std::optional<int64_t> replicas;     // nullopt = "auto" (the planner decides)
  int64_t gpus_per_replica = 1;        // 0 = CPU-only pods
  std::string restart_policy = "OnFailure";  // Always | OnFailure | Never | ExitCode
  std::optional<GpuSelector> gpu_selector;
  nlohmann::json template_ = nlohmann::json::object();  // PodTemplateSpec
};

struct ConfigMapKeyRef {
  std::string name;
  std::string key = "config.json";
};

struct ModelSpec {
  std::optional<std::string> config;         // Hugging Face config.json text
  std::optional<ConfigMapKeyRef> config_map; // or where to find it
  std::optional<std::string> init;           // starting weights (safetensors path in the pods)
};

// The `train` section of the trainer's run file, plus where the tokens are.
struct TrainingSpec {
  std::string data;                 // token file path (or glob) inside the pods
  bool shuffle = false;             // the trainer's data.shuffle
  std::optional<std::string> valid_data;  // validation token file (the trainer's data.valid)
  int64_t eval_every = 0;           // with valid_data: evaluate every this many steps (0 = after the last)
  int64_t eval_batches = 4;         // global batches of valid_data per evaluation
  std::optional<std::string> tokenizer;   // SentencePiece model the tokens came from (data.tokenizer)
  int64_t steps = 0;
  int64_t global_batch = 0;
  int64_t micro_batches = 1;
  int64_t seq_len = 0;
  double lr = 1e-3;
  std::string schedule = "constant";  // constant | cosine
  int64_t warmup_steps = 0;
  double min_lr = 0;
  double beta1 = 0.9, beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double grad_clip = 1.0;
  int64_t seed = 1234;
  std::string precision = "auto";   // GPU GEMM format: auto (per GPU generation) | fp32 | bf16 | fp16
  std::string recompute = "none";   // none | attention | experts | full
  int64_t zero = 0;                 // ZeRO stage: 0, or 1 (dense AdamW moments sharded over the attention pods)
};

struct ParallelSpec {
  std::string schedule = "zebra";   // zebra | sequential | ep
  int64_t zp_groups = 0;            // 0 = planner decides
  int64_t micro_batches_in_flight = 0;  // zebra in waves of this many per attention rank; 0 = all
  int64_t master_port = 29500;
  int64_t timeout_seconds = 600;    // rendezvous (any start order) and every collective
};

struct DispatchSpec {
  bool asymmetric_offload = true;   // Asym-EA: attention ranks may hold experts
  bool dedup = true;                // HierMoE token deduplication
  std::string dedup_depth = "rank";  // rank | node | auto (parallel.dedup when dedup is on)
  int64_t swap_every = 0;           // HierMoE expert swap every this many steps; 0 = never
  std::string transport = "auto";   // rows between ranks: auto | nccl | gloo
};

struct CheckpointSpec {
  std::optional<std::string> claim_name;  // PVC; nullopt = no checkpoints kept
  std::string mount_path = "/checkpoints";
  int64_t interval_steps = 0;             // 0 = only final
  std::string dtype = "auto";             // exported weights (the trainer's output.dtype): auto | fp32 | bf16
};

struct MonitoringSpec {
  int64_t metrics_port = 9090;              // the trainer's --metrics-port
  int64_t progress_interval_seconds = 30;   // 0 = no progress reading
  int64_t metrics_linger_seconds = 0;       // rank 0's --metrics-linger
};

struct SchedulingPolicy {
  std::optional<int64_t> min_available;
  std::optional<std::string> queue;           // Volcano queue / Kueue LocalQueue
  std::optional<std::string> priority_class;
  std::string scheduler = "default";          // default | volcano | kueue
};

struct RunPolicy {
  std::string clean_pod_policy = "Running";   // All | Running | None
  std::optional<int64_t> ttl_seconds_after_finished;
  std::optional<int64_t> active_deadline_seconds;
  int64_t backoff_limit = 3;
  bool suspend = false;
  std::optional<std::string> managed_by;
  std::optional<SchedulingPolicy> scheduling_policy;
};

struct JobSpec {
  RoleSpec attention, expert;
  ModelSpec model;
  TrainingSpec training;
  ParallelSpec parallel;
  DispatchSpec dispatch;
  CheckpointSpec checkpoint;
  MonitoringSpec monitoring;
  RunPolicy run_policy;

  const RoleSpec& role(Role r) const { return r == Role::kAttention ? attention : expert; }
};

// ---- status -------------------------------------------------------------------

inline constexpr const char* kCondCreated = "Created";
inline constexpr const char* kCondRunning = "Running";
inline constexpr const char* kCondRestarting = "Restarting";
inline constexpr const char* kCondSucceeded = "Succeeded";
inline constexpr const char* kCondFailed = "Failed";
inline constexpr const char* kCondSuspended = "Suspended";

struct Condition {
  std::string type;
  std::string status;   // "True" | "False"
  std::string reason;
  std::string message;
  std::string last_transition_time;  // RFC 3339
  bool operator==(const Condition&) const = default;
};

struct ReplicaStatus {
  int64_t active = 0, succeeded = 0, failed = 0;
  bool operator==(const ReplicaStatus&) const = default;
};

struct PlanSummary {
  int64_t attention_replicas = 0;
  int64_t expert_replicas = 0;
  int64_t world_size = 0;
  std::string attention_gpu;   // GPU product (or "cpu")
  std::string expert_gpu;
  std::string config_map;      // the ConfigMap holding plan.json
  std::string summary;         // one line from the planner
  std::string shape;           // the planner's group shape and predicted step ("" = not planned by it)
  std::string runner_up;       // the next best shape the planner priced
  bool operator==(const PlanSummary&) const = default;
};

struct Progress {
  int64_t step = 0;
  int64_t total_steps = 0;
  double percentage = 0;
  std::optional<double> eta_seconds;
  std::optional<double> tokens_per_second;
  std::optional<double> loss;
  std::string update_time;
  std::optional<double> val_loss;   // the last validation loss, when the job evaluates
  bool operator==(const Progress&) const = default;
};

struct JobStatus {
  std::string state;  // Pending | Created | Running | Restarting | Suspended | Succeeded | Failed
  std::vector<Condition> conditions;
  ReplicaStatus attention, expert;
  std::optional<std::string> start_time, completion_time;
  int64_t restarts = 0;
  int64_t observed_generation = 0;
  std::optional<PlanSummary> plan;
  std::optional<Progress> progress;
  bool operator==(const JobStatus&) const = default;
};

struct JobMeta {
  std::string name, namespace_, uid, resource_version, creation_timestamp;
  std::optional<std::string> deletion_timestamp;
  int64_t generation = 0;
};

struct HeterMoEJob {
  JobMeta meta;
  JobSpec spec;
  JobStatus status;
};

// Parses a HeterMoEJob object as served by the apiserver. Throws
// hetermoe::Error naming the field for type errors and unknown spec fields.
// `visited` collects every spec/status path read (drift test).
HeterMoEJob ParseJob(const nlohmann::json& object, std::set<std::string>* visited = nullptr);
JobSpec ParseJobSpec(const nlohmann::json& spec, std::set<std::string>* visited = nullptr);
JobStatus ParseJobStatus(const nlohmann::json& status, std::set<std::string>* visited = nullptr);

// Status as the apiserver stores it (absent optionals omitted).
nlohmann::json StatusToJson(const JobStatus& status);

}  // namespace hetermoe::op
