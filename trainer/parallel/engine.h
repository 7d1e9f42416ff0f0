// The distributed engine: one rank of a zebra-parallel (or sequential, or
// expert-parallel) run, as a training Backend.
//
// Every rank runs the same training loop and reads the same global batch; the
// engine runs this rank's tasks (schedule.h) in order, moving rows between
// attention ranks and expert owners:
//   dispatch channel: attention -> owner  (forward rows, backward output grads)
//   combine channel:  owner -> attention  (expert outputs, input grads)
// Each message is one (layer, micro-batch, owner) block: a header with the
// owner's per-expert row counts, then the rows, exactly the slice of the
// micro-batch's DispatchPlan that the owner's expert range covers (with
// dedup, SetDedup: the block's unique tokens and each row's index into them). Receives
// are posted before they are needed, into buffers sized up front, so transfers
// overlap compute.
//
// After the tasks: gradients of the dense (non-expert) parameters are summed
// over all attention ranks, those of each expert over the groups; the global
// gradient norm is summed over the owners of group 0; every rank updates only
// the tensors it owns. Checkpoints gather group 0's experts on rank 0.
//
// Memory follows ownership: a rank allocates parameters, gradients and both
// AdamW moments only for the tensors it owns (attention ranks: the dense
// model and the experts Asym-EA moved to them; expert ranks: their experts),
// laid out by ParameterLayout::Subset. With ZeRO-1 (train.zero: 1) an
// attention rank keeps the moments of only its shard of the dense tensors,
// updates that shard, and the updated shards are summed into every
// attention rank's parameters (the others contribute zeros). Upload takes the rank's tensors from a
// whole-model state; Download fills a whole-model state on rank 0 only.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "planner/links_json.h"
#include "trainer/backend/backend.h"
#include "trainer/comm/communicator.h"
#include "trainer/model/stages.h"
#include "trainer/parallel/placement.h"
#include "trainer/parallel/task_order.h"
#include "trainer/parallel/trace.h"

namespace hetermoe::parallel {

// Slow-down factors (>= 1) that pad each op's measured time with sleep, so a
// V100-like expert rank and an A40-like attention rank can be emulated on one
// CPU. Which pair applies depends on the rank's role.
struct Emulation {
  double attention = 1.0;  // factor on attention work (AttnFwd, Head, AttnBwd)
  double experts = 1.0;    // factor on expert work (ExpFwd, ExpBwd)
  // Emulated links for the dispatch and combine messages: the sender waits
  // latency + bytes / bandwidth per message to another rank, by whether the
  // peer is on its node (SetDedup's nodes). 0 = as fast as the host goes.
  double inter_node_bytes_per_second = 0, intra_node_bytes_per_second = 0;
  double link_latency_seconds = 0;
};

// How far HierMoE's token deduplication reaches (SetDedup).
enum class DedupDepth {
  kOff,   // every routed row is sent
  kRank,  // a token goes once to each expert rank that holds some of its experts
  kNode,  // and once to each other node whose expert ranks hold several of them
  kAuto,  // per block, rank or node, whichever the links' fitted cost predicts is faster
  // The level below the node (a PCIe switch or NVLink island, given as
  // switch_of_rank): a token goes once to each other switch whose expert
  // ranks hold several of its experts, relayed inside that switch.
  kSwitch,
};

// Makes the rank's device over the engine's host parameter and gradient
// buffers, laid out by `layout` (the rank's own tensors; the CPU device
// computes in them; a GPU device copies them).
using StageDeviceFactory = std::function<std::unique_ptr<model::StageDevice>(
    const model::ParameterLayout& layout, float* params, float* grads)>;

class DistributedBackend final : public backend::Backend {
 public:
  DistributedBackend(const io::MixtralConfig& config, const model::ParameterLayout& layout,
                     const Placement& placement, comm::World* world,
                     const optim::AdamWOptions& adamw, Emulation emulation, Tracer* tracer,
                     const StageDeviceFactory& make_device = nullptr,  // nullptr: the CPU
                     bool zero = false);  // ZeRO-1: dense AdamW moments sharded over the attention ranks
  ~DistributedBackend() override;

  std::string name() const override;
  std::string precision() const override;
  std::vector<bool> SequencesUsed(int64_t global_batch, int64_t micro_batches) const override;
  // HierMoE's token deduplication on the dispatch (default kRank; every rank
  // of a run must agree): a token routed to several experts of one owner is
  // sent once and fanned out there, and the owner sums that token's input
  // grads before sending them back. kNode adds the level above
  // (node_relay.cc): an attention rank sends one block to each other node
  // where two or more expert ranks hold experts of the layer, to the first
  // of them, which splits it among them and, in backward, adds their
  // per-token input-grad sums into one row per token before replying (over
  // Gloo, or over NCCL with the relay's own channels). `node_of_rank`: each global rank's node (any
  // numbering; empty = each rank its own node), also used by the emulated
  // links and the inter-node row counts. kAuto measures the links at once
  // (collective; again over NCCL when SetTransport chooses it): transfers of
  // a few sizes across a node boundary and inside
  // a node, fitted to alpha + beta bytes (planner/dedup_depth.h); then each
  // attention rank takes, for each of its blocks (layer, micro-batch), the
  // depth predicted faster for that block's routing, and tells the route's
  // owners in the block's first word (wire::RouteBlock). Returns a line for
  // the log. Set before the first step. `links` (a run's links.json, the
  // same on every rank): kAuto uses them instead of measuring, here and in
  // SetTransport.
  // kSwitch: `switch_of_rank` gives each global rank's switch (numbered
  // across nodes), and routes run inside switches instead of nodes.
  std::string SetDedup(DedupDepth depth, const std::vector<int>& node_of_rank = {},
                       const std::optional<planner::MeasuredLinks>& links = std::nullopt,
                       const std::vector<int>& switch_of_rank = {});
  // kAuto: the links in use (measured or given); nullopt when no node holds
  // two expert ranks of a layer apart from an attention rank.
  std::optional<planner::MeasuredLinks> Links() const;
  // parallel.swap_every: HierMoE's expert swap (expert_swap.cc). Every this
  // many optimizer steps, in each layer, the two experts on different ranks
  // whose swap most lowers the smooth max of the ranks' deduplicated rows in
  // the last step (planner/expert_swap.h, summed over every attention rank)
  // trade places: slot a takes expert b's weights and AdamW moments and the
  // gate's rows a and b swap, which leaves the model's function as it was.
  // Routing counts in StepLoss and checkpoints keep the experts' original
  // indices. 0 = never. Set before the first step.
  void SetSwapEvery(int steps);
  // Swaps made so far (with those before a resume, SetExpertPlacement).
  int64_t SwapsMade() const;
  // [layer][slot] the expert (original index) each slot holds now; empty
  // when every expert is in its planned slot. For checkpoints.
  std::vector<std::vector<int>> ExpertPlacement() const;
  // Resume: after Upload (which puts expert e in slot e), moves the experts
  // (weights and AdamW moments; the gate's rows) to where a checkpoint's run
  // had them, as that many swaps. Collective.
  void SetExpertPlacement(const std::vector<std::vector<int>>& expert_of_slot, int64_t swaps_made);
  // parallel.micro_batches_in_flight: at most this many of a step's
  // micro-batches (per attention rank) have activations alive; zebra runs
  // them in waves of that many (0 = all at once, zebra's order). Training is
  // the same; memory for activations and expert blocks scales with it.
  // Returns the wave size in force. Set before the first step.
  int SetInFlight(int micro_batches);
  // train.recompute: "none"; "experts" (expert blocks recompute their
  // activations in backward: less memory on owners); "attention" (attention
  // ranks keep each layer's input and recompute its attention block in
  // backward); "full" (both). The same training. Set before the first step.
  void SetRecompute(const std::string& what);
  // parallel.transport: "gloo" (rows through the host over Gloo), "nccl"
  // (rows stay on the GPU and move device to device over NCCL, in the run's
  // compute format; needs a GPU device with NCCL on every rank, else an
  // Error) or "auto" (nccl where every rank can, else gloo). Collective;
  // call before the first step. Returns what runs, e.g. "nccl (bf16 on the
  // wire)". `timeout`: a dead or silent peer's NCCL error comes after it.
  std::string SetTransport(const std::string& transport, std::chrono::milliseconds timeout);
  // `state` holds the whole model, or just this rank's tensors laid out by
  // ParameterLayout::Subset(OwnedTensors()).
  void Upload(const backend::HostState& state) override;
  // A start without a host copy (the weights of model.init or a random
  // init, moments zero): the caller writes this rank's parameters, laid out
  // as Upload's, straight into the engine's buffer, then calls
  // ParamsWritten, which hands them to the device at optimizer step 0.
  float* HostParams();
  void ParamsWritten();
  // Collective. Rank 0 resizes `state` to the whole model and fills it
  // (group 0's experts gathered from their owners); other ranks leave it.
  void Download(backend::HostState* state) override;
  // A checkpoint without the whole model in one rank's memory. Collective:
  // rank 0 calls `write` with a fetch that puts tensor `tensor` (an index
  // into the layout) of buffer `buffer` (0 parameters, 1 exp_avg, 2
  // exp_avg_sq) into `out`, from its own buffers or, one tensor at a time,
  // from the rank of group 0 that holds it; those ranks answer its requests
  // until it is done (also when `write` throws). `write` is ignored elsewhere.
  using TensorFetch = std::function<void(size_t tensor, int buffer, int64_t first, int64_t count, float* out)>;
  void StreamCheckpoint(const std::function<void(const TensorFetch& fetch)>& write);
  // Bytes each rank holds for the model (parameters, gradients, AdamW
  // moments), by global rank; gathered when the engine is made.
  const std::vector<int64_t>& RankStateBytes() const;
  // Per tensor of the layout: whether this rank holds it.
  const std::vector<bool>& OwnedTensors() const;
  backend::StepLoss ComputeGradients(const backend::StepInput& step) override;
  double ClipGradNorm(double max_norm) override;
  // Skipped, on every rank alike, when any rank's gradients overflowed (fp16).
  void OptimizerStep(double lr) override;
  double LossScale() const override;
  int64_t SkippedSteps() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int rank_;
};

}  // namespace hetermoe::parallel
