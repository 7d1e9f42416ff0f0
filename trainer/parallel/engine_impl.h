// The distributed engine's state, shared by its parts (see engine.cc for
// the map). Internal to trainer/parallel: users include engine.h.
#pragma once

#include <algorithm>
#include <chrono>
#include <map>
#include <optional>
#include <thread>

#include "planner/dedup_depth.h"
#include "trainer/model/mixtral.h"
#include "trainer/ops/experts.h"
#include "trainer/parallel/engine.h"
#include "trainer/parallel/node_routes.h"
#include "trainer/parallel/ownership.h"
#include "trainer/parallel/wire.h"

namespace hetermoe::parallel {
namespace engine_detail {

using Clock = std::chrono::steady_clock;

inline double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Node-level dedup adds: kNodeRows (attention rank -> a node's first owner),
// kNodeGrads (back), and per attention rank a: kRelayRows + a (first owner
// -> the node's other owners) and kRelaySums + a (back), kRelaySums = kRelayRows + M.
enum MessageKind : uint32_t {
  kRows = 0, kOutputs = 1, kOutputGrads = 2, kInputGrads = 3, kNodeRows = 4, kNodeGrads = 5, kRelayRows = 6
};

using wire::Dedup;
using wire::HeaderBytes;

// What an owner keeps of one (layer, micro-batch, source) block.
struct OwnerSlot {
  std::vector<char> inbox;          // header + rows (unique rows with dedup)
  int64_t rows = 0;
  int64_t uniques = 0;              // dedup: unique tokens among the rows
  std::vector<int32_t> index;       // dedup: row -> unique token
  std::vector<float> xp;            // dedup: the rows, fanned out from the unique ones
  const float* x = nullptr;         // the rows the experts run on (in `inbox`, or `xp` with dedup)
  std::vector<float> dx_sums;       // dedup: input grads summed per unique token
  ops::DispatchPlan plan;           // counts/offsets over the owner's range only
  const float* y = nullptr;         // outputs to send back (host, owned by block)
  const float* dxp = nullptr;       // input grads to send back (host, owned by block)
  std::vector<float> dy;            // output grads in
  bool relay_pending = false;       // node dedup, on the node's first owner: RelayRows fills the inbox
  bool route_word = false;          // dedup auto: the inbox starts with a wire::RouteBlock word
  size_t at = 0;                    // where the block starts in the inbox (after that word)
  std::unique_ptr<comm::Request> inbox_request, dy_request;
  model::DeviceRows dev;            // NCCL transport: the block's rows on the device
};

using Channel = model::RowExchange::Channel;

}  // namespace engine_detail

using namespace engine_detail;  // NOLINT: the parts' shared vocabulary

struct DistributedBackend::Impl {
  io::MixtralConfig config;
  const model::ParameterLayout& layout;
  Placement placement;
  comm::World* world;
  int rank;
  Emulation emulation;
  Tracer* tracer;
  int L, P, M, R, group;
  int64_t E, d, f, k;
  std::vector<Task> order;

  Ownership own;                     // what this rank holds (packed into `own.local`)
  std::vector<float> params, grads;  // host copies over `local`: all-reduce, norm and AdamW run here
  std::optional<optim::AdamW> adamw;
  std::unique_ptr<model::StageDevice> device;  // where the stages compute

  std::unique_ptr<comm::Communicator> dispatch, combine, dense, replicas, everyone;
  // The NCCL transport (SetTransport): rows stay on the device and move
  // device to device; the Gloo dispatch channel carries only the headers.
  // Null: rows go through the host over Gloo.
  std::unique_ptr<model::RowExchange> exchange;
  std::vector<int64_t> posted;  // [channel][l][j]: the exchange group posted this step, -1 before
  // With the NCCL transport the optimizer step stays on the device too:
  // gradient sums over NCCL (dense over the attention ranks, experts over
  // the groups), norm, clipping and AdamW there; the host buffers are filled
  // from the device only for checkpoints (PullState).
  bool device_step = false;
  std::unique_ptr<model::GradReducer> dense_sums, replica_sums;
  // Device step: which gradients are final when, so their sums start then,
  // beside the rest of the backward: a layer's dense tensors after its last
  // A^B, the final norm and LM head after the last H, the embedding with
  // layer 0, a layer's experts after their last E^B.
  std::vector<std::vector<model::BufferRange>> dense_by_layer, experts_by_layer;  // [l]
  std::vector<model::BufferRange> dense_head, dense_embed;
  void PlanGradientSums();
  enum class Finished { kHead, kAttention, kExperts };
  void PostFinishedGradients(Finished what, int l, int j);

  // Micro-batches in flight (SetInFlight): zebra runs them in waves of W, and
  // the stage objects holding activations are W, reused wave after wave
  // (micro-batch j uses object j % W), as are the owners' expert blocks.
  // Before an object is reused, the transfers that read from it are waited for.
  int W = 0;
  std::vector<std::vector<std::unique_ptr<comm::Request>>> micro_sends;  // [j % W] Gloo sends from it
  std::vector<std::unique_ptr<model::ExpertBlock>> blocks;              // [l][j % W][source]
  std::vector<std::vector<std::unique_ptr<comm::Request>>> block_sends;  // [l][j % W][source]

  // attention side
  std::vector<std::unique_ptr<model::MicroBatchStages>> micro;
  std::vector<std::vector<char>> outbox;                       // [l][j][owner]
  std::vector<std::unique_ptr<comm::Request>> outputs_in;      // [l][j][owner]
  std::vector<std::unique_ptr<comm::Request>> input_grads_in;  // [l][j][owner]
  std::vector<Dedup> dedups;                                   // [l][j][owner] (dedup on)
  std::vector<int32_t> unique_of;                              // MakeDedup's scratch: token -> unique
  std::vector<std::vector<float>> grad_sums;                   // [l][j][owner] input grads per unique token
  bool dedup = true;  // depth != kOff
  DedupDepth depth = DedupDepth::kRank;
  // --- node-level dedup (node_relay.cc) ---
  std::vector<int> node_of;  // [local member] its node
  // [local member] the group routes run in: its node, or its switch (kSwitch)
  std::vector<int> relay_group_of;
  // [l] (depth kNode or kAuto; node_routes.h): attention ranks on other
  // nodes send each route one block, to owners[0], which relays.
  std::vector<std::vector<NodeRoute>> routes;
  // [l][j][a]: attention rank a's rows of (l, j) took the routes (node
  // level). kNode: always; kAuto: chosen by a from its routing mask
  // (ChooseNodeLevel), and learnt by the route owners from the word that
  // leads a's message to them (wire::RouteBlock).
  std::vector<char> via_node;
  // kAuto: the fitted links. This step's blocks that could take a route and
  // those that did, per layer (metrics).
  planner::LinkCost inter_link, intra_link;
  std::string links_over;    // where they were measured: gloo | nccl ("" = no routes to measure)
  bool links_given = false;  // from a links.json (SetDedup), not measured
  std::vector<double> blocks_routed, blocks_node;
  std::string MeasureLinks();          // kAuto: fits inter_link and intra_link (collective)
  // kAuto, attention side: node level for this rank's rows of (l, j), from
  // what either depth would send them (planner::PredictDepth).
  bool ChooseNodeLevel(int l, int j);
  void MakeRoutes();
  bool AutoRoutes() const { return depth == DedupDepth::kAuto && !routes.empty(); }
  // The route that owner o of layer l belongs to, seen from attention rank
  // a on another node, or nullptr; whatever depth a's rows take.
  const NodeRoute* RouteFor(int l, int a, int o) const;
  // Some route of layer l is in another group than attention rank a.
  bool ReachesRoute(int l, int a) const;
  // The route carrying owner o's rows of (l, j) from attention rank a, or nullptr (sent directly).
  const NodeRoute* RouteOf(int l, int j, int a, int o) const {
    return via_node.empty() || !via_node[Idx(l, j, a)] ? nullptr : RouteFor(l, a, o);
  }
  bool ViaNode(int l, int j, int a) const { return !via_node.empty() && via_node[Idx(l, j, a)]; }
  // attention side, [l][j][route]
  std::vector<Dedup> node_dedups;
  std::vector<std::vector<char>> node_outbox;
  std::vector<std::vector<float>> node_grad_sums;
  std::vector<std::unique_ptr<comm::Request>> node_grads_in;
  // The node blocks' headers (and, over Gloo, rows); with the NCCL transport
  // the rows join the layer's kRows group as `sends`.
  void SendNodeBlocks(int l, int j, std::vector<model::RowExchange::Send>* sends);
  void PostNodeGradReceives(int l, int j);
  void ScatterNodeGradSums(int l, int j);
  // the node's first owner, [l][j][attention rank]
  struct Relay {
    std::vector<char> inbox;
    size_t at = 0;  // where the node block starts in it (after a route word with kAuto)
    std::unique_ptr<comm::Request> request;
    std::vector<wire::NodeSplit> split;  // per route owner
    int64_t uniques = 0, rows = 0;
    std::vector<float> sums;                   // per node token
    std::vector<std::vector<float>> peer_sums;  // per route owner
    // NCCL transport: where owner i's sums start among the owners' sums,
    // one after the other on the device (relay_sums).
    std::vector<int64_t> sums_at;
    int64_t all_sums = 0;
  };
  // NCCL transport, per attention rank: the node's unique rows from it
  // (received, then relayed) and the owners' sums for it (received, then
  // added into the reply), device scratch reused layer after layer.
  std::vector<std::unique_ptr<model::ExpertBlock>> relay_rows, relay_sums;
  float* RelayScratch(std::vector<std::unique_ptr<model::ExpertBlock>>& blocks, int a, int64_t rows);
  std::vector<Relay> relays;
  void RelayRows(int l, int j, int a);  // the node block in, each owner's block out (its own into its slot)
  void RelaySums(int l, int j);         // after this rank's ExpBwd(l, j): the owners' sums in, one block out
  // NCCL transport: the relay's groups inside the node (kRelayRows after the
  // node rows are in; kRelaySums after the experts' backward), and the
  // first owner's replies to the attention ranks (added to `sends`).
  void PostRelayRows(int l, int j);
  void PostRelaySums(int l, int j, std::vector<model::RowExchange::Send>* sends);
  // Emulated links: the time a message of `bytes` to local member `peer` takes.
  double LinkSeconds(size_t bytes, int peer) const;
  // HierMoE's expert swap (SetSwapEvery, expert_swap.cc).
  int swap_every = 0;
  int64_t optimizer_calls = 0, swaps_made = 0;
  std::vector<std::vector<std::vector<int64_t>>> routed;  // [l][slot]: tokens here that chose it (a step that swaps; else empty)
  std::vector<std::vector<int32_t>> expert_of_slot;       // [l][slot]: the expert (original index) it holds
  void RecordRouting(int l, int j, const ops::DispatchPlan& plan);
  void SwapExperts();  // after an optimizer step that is due
  void Relabel(int l, int64_t a, int64_t b);  // StartRelabel, then FinishRelabel
  // One swap's experts in flight: this rank's slot's tensors out, the
  // other owner's in (none when this rank holds neither or both slots).
  struct Move {
    std::vector<std::pair<float*, int64_t>> buffers;  // parameters and moments of w1, w2, w3
    std::vector<float> out, in;
    std::unique_ptr<comm::Request> send, recv;
  };
  Move StartRelabel(int l, int64_t a, int64_t b);
  void FinishRelabel(Move* move);
  bool Permuted() const;  // some expert is not in its planned slot
  // Layout index of tensor `name`.
  size_t TensorIndex(const std::string& name) const;
  // The layout index holding tensor i in the experts' original order (an
  // expert tensor of a swapped expert lives in its slot's tensor).
  size_t StoredTensor(size_t i) const;
  // Layer of a gate tensor, else -1.
  int GateLayer(size_t i) const;
  // Layer l's gate [E, d] from slot order to the experts' original order, in place.
  void GateToOriginalOrder(int l, float* gate) const;
  // A whole model's state (Download) from slot order to the original order.
  void ToOriginalOrder(backend::HostState* s) const;
  double bytes_sent = 0;                                       // dispatch + combine, this step
  // This step's dispatch, per layer: the rows sent to owners for their
  // routed rows (one per token and owner with dedup), and the routed rows
  // each owner received, by global rank ([l * world + rank]).
  std::vector<double> rows_sent, rows_to_rank;
  // Of rows_sent, those to another node; and the rows first owners relayed
  // inside their node (node dedup's second hop), per layer.
  std::vector<double> rows_inter_node, rows_relayed;
  // owner side
  std::vector<OwnerSlot> slots;                                // [l][j][source]
  std::vector<std::unique_ptr<comm::Request>> sends;

  std::vector<int64_t> rank_state_bytes;  // every rank's OwnedStateBytes, gathered once
  bool apply_step = true;                 // false: a rank found an overflow, every rank skips this step
  double last_loss_scale = 1.0;
  int64_t skipped_steps = 0;
  int64_t micro_tokens = 0;
  double loss_sum = 0, ce_sum = 0, aux_sum = 0;
  std::vector<std::vector<int64_t>> expert_tokens;
  double idle = 0, dispatch_wait = 0, combine_wait = 0;

  Impl(const io::MixtralConfig& c, const model::ParameterLayout& lay, const Placement& p,
       comm::World* w, const optim::AdamWOptions& opt, Emulation em, Tracer* t, const StageDeviceFactory& make_device,
       bool zero);

  size_t Idx(int l, int j, int x) const { return (static_cast<size_t>(l) * R + j) * P + x; }
  size_t BlockIdx(int l, int j, int a) const { return (static_cast<size_t>(l) * W + j % W) * P + a; }
  model::MicroBatchStages& Micro(int j) { return *micro[j % W]; }
  model::ExpertBlock& Block(int l, int j, int a) {
    auto& b = blocks[BlockIdx(l, j, a)];
    if (!b) b = device->NewExpertBlock();
    return *b;
  }
  // Waits for what still reads micro-batch j - W's stage object (output
  // grads on their way), before micro-batch j takes it over.
  void BeforeReusingMicro(int j);
  // The same for owner block (l, j % W, a): the outputs and input grads of
  // micro-batch j - W.
  void BeforeReusingBlock(int l, int j, int a);
  // Calls fn(a, slot) for every attention rank a whose block of (l, j) has
  // rows on this owner.
  template <typename Fn>
  void ForEachSlot(int l, int j, Fn fn) {
    for (int a = 0; a < M; ++a)
      if (OwnerSlot& s = slots[Idx(l, j, a)]; s.rows > 0) fn(a, s);
  }
  int64_t& Posted(Channel c, int l, int j) { return posted[(static_cast<size_t>(c) * L + l) * R + j]; }
  bool OwnsLayer(int l) const { return Range(l, placement.LocalOf(rank)).count > 0; }
  uint32_t Tag(uint32_t kind, int l, int j) const { return (kind * L + l) * R + j; }
  // Node dedup's messages inside a node, per attention rank a: its rows from
  // the first owner to the others, and their sums back.
  uint32_t RelayRowsKind(int a) const { return kRelayRows + static_cast<uint32_t>(a); }
  uint32_t RelaySumsKind(int a) const { return kRelayRows + static_cast<uint32_t>(M + a); }
  const ExpertRange& Range(int l, int x) const { return placement.owners[l][x]; }
  // Tensor i of `layout` in this rank's buffers (it must own it).
  float* Grad(size_t i) { return grads.data() + own.local_offset[i]; }
  float* Param(size_t i) { return params.data() + own.local_offset[i]; }
  // Tensor i's AdamW moment (b = 1 exp_avg, 2 exp_avg_sq) here; it must have them (own.moments).
  float* Moment(int b, size_t i) {
    return (b == 1 ? adamw->exp_avg() : adamw->exp_avg_sq()).data() + adamw->moment_offset(own.local_index[i]);
  }
  // ZeRO-1: every attention rank's dense parameters from the shards' updates.
  void GatherDenseShards();

  // The listed tensors (layout indices, held here) as spans of this rank's
  // buffers, adjacent ones merged.
  std::vector<model::BufferRange> Ranges(const std::vector<size_t>& tensors) const;
  std::vector<model::BufferRange> AllLocal() const { return {{0, own.local.total()}}; }

  // Device optimizer: the device's parameters and moments into the host buffers.
  void PullState();
  // The host parameters (and, with a device optimizer, the moments) to the
  // device, at AdamW step `optimizer_step`.
  void PushState(int64_t optimizer_step);

  // A GradReducer over communicator c's members, if it has more than one.
  std::unique_ptr<model::GradReducer> ReducerOver(comm::Communicator* c, std::chrono::milliseconds timeout);

  void Connect();

  // --- timing, emulation, tracing ---
  template <typename Fn>
  void Compute(const Task& task, double factor, Fn fn) {
    const auto t0 = Clock::now();
    fn();
    const double spent = Seconds(t0, Clock::now());
    if (factor > 1.0) std::this_thread::sleep_for(std::chrono::duration<double>(spent * (factor - 1.0)));
    if (tracer) tracer->Add(ToString(task), Tracer::kCompute, t0, Clock::now());
  }

  void Wait(comm::Request* r, bool dispatch_channel, const char* what, int l, int j) {
    Waited([&] { r->Wait(); }, dispatch_channel, what, l, j);
  }
  // Waits for an exchange group (NCCL transport).
  void WaitGroup(Channel c, int l, int j, const char* what);
  template <typename Fn>
  void Waited(Fn wait, bool dispatch_channel, const char* what, int l, int j) {
    const auto t0 = Clock::now();
    wait();
    const auto t1 = Clock::now();
    const double s = Seconds(t0, t1);
    idle += s;
    (dispatch_channel ? dispatch_wait : combine_wait) += s;
    if (tracer && s > 20e-6)
      tracer->Add(std::string(what) + "(" + std::to_string(l + 1) + "," + std::to_string(j + 1) + ")",
                  dispatch_channel ? Tracer::kDispatch : Tracer::kCombine, t0, t1);
  }

  // --- attention side ---
  // The rows of a micro-batch's dispatch plan that owner range r covers.
  struct Rows {
    int64_t first, count;
  };
  static Rows RowsOf(const ops::DispatchPlan& plan, const ExpertRange& r) {
    const int64_t first = plan.offsets[r.first];
    return {first, plan.offsets[r.first + r.count] - first};
  }

  void WaitFromOwners(std::vector<std::unique_ptr<comm::Request>>& requests, int l, int j,
                      const char* what) {
    for (int o = 0; o < P; ++o)
      if (auto& r = requests[Idx(l, j, o)]) {
        Wait(r.get(), false, what, l, j);
        r.reset();
      }
  }

  // Counts what this rank sends to its peers (the dispatch and combine traffic).
  // `into`: where the request waits (a reused object's list), else `sends`.
  void Send(comm::Communicator* c, const void* data, size_t bytes, int peer, uint32_t tag,
            std::vector<std::unique_ptr<comm::Request>>* into = nullptr) {
    if (peer != placement.LocalOf(rank)) {  // not the self-mailbox
      bytes_sent += static_cast<double>(bytes);
      if (const double s = LinkSeconds(bytes, peer); s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(s));
    }
    (into ? into : &sends)->push_back(c->Isend(data, bytes, peer, tag));
  }

  // Calls fn(owner, range, first row, rows) for every owner of layer l that
  // holds experts, over micro-batch j's plan.
  template <typename Fn>
  void ForEachOwner(int l, int j, Fn fn) {
    const ops::DispatchPlan& plan = Micro(j).plan(l);
    for (int o = 0; o < P; ++o) {
      const ExpertRange& r = Range(l, o);
      if (r.count == 0) continue;
      const auto [row0, rows] = RowsOf(plan, r);
      fn(o, r, row0, rows);
    }
  }

  // Dedup: each token's summed input grad goes to its first row, zeros to
  // the others, so that AttentionBackward's scatter-add over rows yields the
  // same per-token sum.
  void FanOutGradSums(int l, int j);

  // The header (and, over Gloo, the rows) of micro-batch j's layer-l block
  // for each owner; with the NCCL transport the rows go in one exchange
  // group with this rank's own receives of that block as an owner.
  void PostDispatch(int l, int j);

  void FinishCombine(int l, int j);

  void PostBackwardDispatch(int l, int j);

  // --- the NCCL transport's groups ---
  // Each channel's groups are posted in the schedule's (layer, micro-batch)
  // order on every rank, each with all of this rank's sends and receives of
  // it (RowExchange): at the first moment the rank has its sends ready, or,
  // with none, when it first needs the receives.
  using Recvs = std::vector<model::RowExchange::Recv>;
  void PostGroup(Channel c, int l, int j, std::vector<model::RowExchange::Send> sends, Recvs recvs);

  // Owner: the rows of (l, j) from every attention rank, fanned out.
  Recvs OwnerRowRecvs(int l, int j);
  // Attention: the expert outputs of (l, j) from every owner.
  Recvs AttentionOutputRecvs(int l, int j);
  // Owner: the output grads of (l, j) from every attention rank.
  Recvs OwnerOutputGradRecvs(int l, int j);
  // Attention: the input grads of (l, j) from every owner; with dedup one
  // row per unique token, put on the token's first row (zeros elsewhere).
  Recvs AttentionInputGradRecvs(int l, int j);

  void RunAttention(const Task& t, const backend::StepInput& step, float loss_scale);

  // --- owner side ---
  // Headers (and, over Gloo, rows) are received for the whole step up
  // front, into buffers sized for the most that can arrive: a token picks k
  // distinct experts, so it sends at most min(k, experts held) rows to this
  // owner, and with dedup the rows on the wire are at most one per token.
  int64_t MaxRows(const ExpertRange& r) const { return micro_tokens * std::min<int64_t>(k, r.count); }
  // The most a block over `experts` experts can take on the wire: header,
  // and over Gloo its rows (with dedup at most one per token).
  size_t InboxBytes(int64_t experts, bool with_dedup) const {
    const int64_t max_rows = micro_tokens * std::min<int64_t>(k, experts);
    const int64_t on_wire = exchange ? 0 : with_dedup ? std::min(max_rows, micro_tokens) : max_rows;
    return HeaderBytes(experts, max_rows, with_dedup) + on_wire * d * sizeof(float);
  }
  void PostOwnerReceives();

  // Waits for attention rank a's block of (l, j) and reads its header; over
  // Gloo the rows too (fanned out with dedup), with the NCCL transport the
  // block's device rows are made ready for the exchange to fill.
  void ReadHeader(int l, int j, int a);

  void RunOwner(const Task& t);

  // Sums the listed tensors' gradients over a communicator, packed.
  void AllReduceTensors(comm::Communicator* c, const std::vector<size_t>& tensors);
};

}  // namespace hetermoe::parallel
