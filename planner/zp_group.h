// One ZP group shape, priced: from (attention kind x M, expert kind x N,
// sequences per attention rank S, micro-batches R, Asym-EA offload) to the
// per-op durations the simulator needs, its memory, and its simulated step.
//
// PlanningContext gathers what every evaluation shares: the model, the
// sequence length, one cost model per GPU kind, the cluster's links. It is
// built once per plan and only read afterwards.
//
// Communication per micro-batch and layer, one attention rank's view: its
// b*T tokens go to their k experts; the share routed to experts on expert
// ranks crosses to the N expert ranks, the share routed to experts Asym-EA
// moved onto attention ranks goes to the other M-1 attention ranks. An
// expert rank receives from all M attention ranks. The dispatch takes as
// long as the slower side (sender or receiver), per the alpha-beta model;
// the combine moves the same bytes back; backward repeats both. With
// deduplication (parallel.dedup, as the engine) the forward's dispatch and
// the backward's combine (input grads) carry one row per token and owner
// rank instead of one per routed expert, the expected count under uniform
// routing (planner/dedup.h); the forward's combine and the backward's
// dispatch (output grads, one per expert) stay whole.
// Gradients are all-reduced as they become ready: 2 (P-1)/P of the bytes over
// the slowest link of a ring, plus 2 log2(P) message latencies (NCCL's tree
// algorithm keeps the latency logarithmic at scale).
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "planner/asym_ea.h"
#include "planner/cost_model.h"
#include "planner/inventory.h"
#include "planner/links_json.h"
#include "planner/swap_forecast.h"
#include "planner/memory_model.h"
#include "planner/step_graph.h"

namespace hetermoe::planner {

// A GPU kind, or a pool of kinds sharing one role ("H100+A100-80GB"): its
// ranks take equal work, so it runs at its slowest member's pace, with its
// smallest member's memory and slowest link.
struct KindContext {
  std::vector<std::string> members;           // the kinds (one for a plain kind)
  GpuProfile gpu;                             // a pool's: the smallest memory and links of its members
  std::optional<MeasuredProfile> measured;    // the measurement matching the model, if any
  std::unique_ptr<ComputeCostModel> cost;     // refers to gpu, measured and the context's model
  int count = 0;             // GPUs of this kind in the inventory
  int max_per_node = 0;      // GPUs of this kind on its largest node
  double nic_gbps = 0;       // slowest NIC among its nodes
};

class PlanningContext {
 public:
  PlanningContext(const ModelShape& model, const Inventory& inventory, const GpuProfileTable& profiles,
                  int64_t seq_len, Precision precision, int micro_batches_in_flight = 0, bool zero = false,
                  const std::string& recompute = "none", bool dedup = true,
                  const std::string& dedup_depth = "rank",
                  const std::optional<MeasuredLinks>& measured_links = std::nullopt,
                  const std::vector<std::vector<int64_t>>& routing = {}, bool swap = false);
  PlanningContext(const PlanningContext&) = delete;
  PlanningContext& operator=(const PlanningContext&) = delete;

  const ModelShape& model() const { return model_; }
  const Inventory& inventory() const { return inventory_; }
  int64_t seq_len() const { return seq_len_; }
  Precision precision() const { return precision_; }
  int micro_batches_in_flight() const { return micro_batches_in_flight_; }  // 0 = all
  bool zero() const { return zero_; }
  const std::string& recompute() const { return recompute_; }  // train.recompute
  bool dedup() const { return dedup_; }                         // parallel.dedup
  // rank | node | auto: how far up dedup reaches (GroupStepSpec).
  const std::string& dedup_depth() const { return dedup_depth_; }
  const KindContext& Kind(const std::string& kind) const;
  std::vector<std::string> Kinds() const;  // inventory order
  // What may fill a role: every kind, then every pool of 2 or more kinds
  // (clusters of up to kMaxPooledKinds kinds), each in inventory order.
  std::vector<std::string> RoleKinds() const;
  static constexpr int kMaxPooledKinds = 5;

  // Per-GPU link of `kind`: within a node, or leaving it while
  // `nic_sharing` GPUs of the node send at once (0 = all of the largest node's).
  // With measured links (a run's links.json) those replace the GPU
  // profiles' and the inventory's numbers for every kind.
  LinkModel Link(const std::string& kind, bool remote, int nic_sharing = 0) const;
  // With a run's routing: the busiest of `expert_ranks` ranks' load per
  // layer (swap_forecast.h), computed once per rank count; null = uniform.
  const RoutingLoad* Load(int expert_ranks) const;
  // GPUs of `kind` on `host` (inventory nodes with the same host share a machine).
  const std::map<std::string, std::map<std::string, int>>& Hosts() const { return hosts_; }
  // Ring all-reduce of `bytes` over `participants` GPUs of `kind`.
  double AllReduceSeconds(const std::string& kind, double bytes, int participants) const;

 private:
  ModelShape model_;
  Inventory inventory_;
  int64_t seq_len_;
  Precision precision_;
  int micro_batches_in_flight_ = 0;
  bool zero_ = false;
  std::string recompute_ = "none";
  bool dedup_ = true;
  std::string dedup_depth_ = "rank";
  std::optional<MeasuredLinks> measured_links_;
  std::vector<std::vector<int64_t>> routing_;
  bool swap_ = false;
  mutable std::mutex loads_mutex_;
  mutable std::map<int, RoutingLoad> loads_;  // by expert ranks
  std::map<std::string, KindContext> kinds_;                 // kinds and pools
  std::vector<std::string> role_kinds_;
  std::map<std::string, std::map<std::string, int>> hosts_;  // host -> kind or pool -> GPUs
};

struct GroupShape {
  std::string attention_gpu;
  std::string expert_gpu;
  int attention_ranks = 0;               // M
  int expert_ranks = 0;                  // N
  int groups = 0;                        // identical groups of this shape (data-parallel replicas)
  int sequences_per_attention_rank = 0;  // S
  int micro_batches = 1;                 // R, divides S
  std::vector<int> offloaded;            // Asym-EA experts moved per layer (group total); empty = none

  bool SameKind() const { return attention_gpu == expert_gpu; }
  int Gpus() const { return groups * (attention_ranks + expert_ranks); }
};

// Where a shape's groups sit, as Assemble places them: every group inside
// one machine when the machines can hold them all (dispatch over NVLink/PCIe),
// else across machines, through NICs shared by the role's GPUs of a node.
struct GroupLinks {
  bool remote = true;
  int attention_nic_sharing = 1;  // GPUs of a node sending at once
  int expert_nic_sharing = 1;
};
GroupLinks LinksOf(const PlanningContext& ctx, const GroupShape& shape);
// Groups of M `attention` + N `expert` GPUs that fit inside machines.
int GroupsInsideMachines(const PlanningContext& ctx, const std::string& attention, const std::string& expert, int M,
                         int N);

// Who the data-parallel gradient all-reduces span (over the whole plan).
struct DataParallelWorld {
  int attention_ranks = 1;  // all attention ranks of all groups
  int groups = 1;           // all ZP groups (each holds one copy of every expert)
};

// `schedule` decides how many micro-batches' activations are alive at once.
ZpMemory GroupMemory(const PlanningContext& ctx, const GroupShape& shape, Schedule schedule = Schedule::kZebra);
// Algorithm 1's inputs for a shape. With `head_aware`, T_A also carries the
// attention rank's share of the LM head (spread over the layers): the head
// runs on attention ranks too, which the paper's T_A leaves out [inferred].
AsymEaInputs GroupAsymEaInputs(const PlanningContext& ctx, const GroupShape& shape, const ZpMemory& memory,
                               bool head_aware = false);
ZebraStepSpec GroupStepSpec(const PlanningContext& ctx, const GroupShape& shape, const DataParallelWorld& world);

struct GroupEvaluation {
  GroupShape shape;          // with the chosen micro_batches and offloaded
  double step_seconds = 0;
  double attention_busy = 0; // compute busy fraction of the representative ranks
  double expert_busy = 0;
  bool asym_ea_used = false;
  AsymEaResult asym_ea;      // Algorithm 1's output (also when not used)
  ZpMemory memory;
};

// Simulates `shape` under `schedule` for each candidate R (divisors of S, at
// most `max_micro_batches`), without Asym-EA and with the offloads Algorithm
// 1 proposes (paper inputs and head-aware inputs); Asym-EA is forced when
// memory requires it, skipped when disabled or the shape does not allow it.
// The simulation, not Algorithm 1, has the last word: an offload that does
// not shorten the simulated step is not used. Returns the fastest. Throws hetermoe::Error with the memory problem
// when the shape cannot fit.
GroupEvaluation EvaluateGroup(const PlanningContext& ctx, const GroupShape& shape, const DataParallelWorld& world,
                              Schedule schedule, bool allow_asym_ea, int max_micro_batches);

// "2 x (3 A40 : 3 V100)": groups x (M attention kind : N expert kind).
std::string ShapeText(const GroupShape& shape);

// Whether `shape` (its S) fits in memory at some R, moving experts with
// Asym-EA if allowed and needed.
bool FitsInMemory(const PlanningContext& ctx, const GroupShape& shape, bool allow_asym_ea, int max_micro_batches);

// A shape that was priced and does not fit.
struct RefusedShape {
  GroupShape shape;
  std::string reason;  // one line: the memory problem
};

// The all-reduces of the expert-less model's gradients over `participants`
// GPUs of `kind` (LM head, one layer, embedding), as GradientSync splits them.
GradientSync ExpertlessGradientSync(const PlanningContext& ctx, const std::string& kind, int participants);

// Divisors of s up to `cap`, ascending.
std::vector<int> MicroBatchCandidates(int s, int cap);

}  // namespace hetermoe::planner
