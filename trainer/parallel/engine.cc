// Notation: L layers, E experts, P ranks per group (local indices), M
// attention ranks per group, R micro-batches per attention rank, d hidden,
// f expert width, k experts per token. Message tags encode (kind, layer,
// micro-batch); the pair (peer, tag) is unique within a step.
#include "trainer/parallel/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <thread>

#include "common/error.h"
#include "trainer/model/cpu_stages.h"
#include "trainer/model/mixtral.h"
#include "trainer/ops/experts.h"
#include "trainer/parallel/ownership.h"
#include "trainer/parallel/wire.h"

namespace hetermoe::parallel {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

enum MessageKind : uint32_t { kRows = 0, kOutputs = 1, kOutputGrads = 2, kInputGrads = 3 };

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
  std::unique_ptr<model::ExpertBlock> block;  // the experts' compute on this rank's device
  const float* y = nullptr;         // outputs to send back (host, owned by block)
  const float* dxp = nullptr;       // input grads to send back (host, owned by block)
  std::vector<float> dy;            // output grads in
  std::unique_ptr<comm::Request> inbox_request, dy_request;
  model::DeviceRows dev;            // NCCL transport: the block's rows on the device
};

using Channel = model::RowExchange::Channel;

}  // namespace

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

  // attention side
  std::vector<std::unique_ptr<model::MicroBatchStages>> micro;
  std::vector<std::vector<char>> outbox;                       // [l][j][owner]
  std::vector<std::unique_ptr<comm::Request>> outputs_in;      // [l][j][owner]
  std::vector<std::unique_ptr<comm::Request>> input_grads_in;  // [l][j][owner]
  std::vector<Dedup> dedups;                                   // [l][j][owner] (dedup on)
  std::vector<int32_t> unique_of;                              // MakeDedup's scratch: token -> unique
  std::vector<std::vector<float>> grad_sums;                   // [l][j][owner] input grads per unique token
  bool dedup = true;
  double bytes_sent = 0;                                       // dispatch + combine, this step
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
       comm::World* w, const optim::AdamWOptions& opt, Emulation em, Tracer* t, const StageDeviceFactory& make_device)
      : config(c), layout(lay), placement(p), world(w), rank(w->rank()), emulation(em), tracer(t), own(lay, p, w->rank()) {
    L = p.layers;
    P = p.group_size;
    M = p.attention_per_group;
    R = p.micro_per_rank;
    group = p.GroupOf(rank);
    E = c.num_local_experts;
    d = c.hidden_size;
    f = c.intermediate_size;
    k = c.num_experts_per_tok;
    order = TaskOrder(p, rank);
    params.assign(own.local.total(), 0.0f);
    grads.assign(own.local.total(), 0.0f);
    adamw.emplace(own.local, opt);
    device = make_device ? make_device(own.local, params.data(), grads.data())
                         : model::MakeCpuStageDevice(config, own.local, params.data(), grads.data());
    Connect();
    if (p.IsAttention(rank))
      for (int j = 0; j < R; ++j) micro.push_back(device->NewMicroBatch());
    std::vector<double> bytes(static_cast<size_t>(world->size()), 0.0);
    bytes[rank] = 4.0 * sizeof(float) * static_cast<double>(own.local.total());
    everyone->AllReduceSum(bytes.data(), bytes.size());
    for (double b : bytes) rank_state_bytes.push_back(static_cast<int64_t>(b));
    outbox.resize(static_cast<size_t>(L) * R * P);
    outputs_in.resize(outbox.size());
    input_grads_in.resize(outbox.size());
    dedups.resize(outbox.size());
    grad_sums.resize(outbox.size());
    slots.resize(static_cast<size_t>(L) * R * P);
  }

  size_t Idx(int l, int j, int x) const { return (static_cast<size_t>(l) * R + j) * P + x; }
  int64_t& Posted(Channel c, int l, int j) { return posted[(static_cast<size_t>(c) * L + l) * R + j]; }
  bool OwnsLayer(int l) const { return Range(l, placement.LocalOf(rank)).count > 0; }
  uint32_t Tag(MessageKind kind, int l, int j) const {
    return (static_cast<uint32_t>(kind) * L + l) * R + j;
  }
  const ExpertRange& Range(int l, int x) const { return placement.owners[l][x]; }
  // Tensor i of `layout` in this rank's buffers (it must own it).
  float* Grad(size_t i) { return grads.data() + own.local_offset[i]; }
  float* Param(size_t i) { return params.data() + own.local_offset[i]; }

  // The listed tensors (layout indices, held here) as spans of this rank's
  // buffers, adjacent ones merged.
  std::vector<model::BufferRange> Ranges(const std::vector<size_t>& tensors) const {
    std::vector<model::BufferRange> r;
    for (size_t i : tensors) r.push_back({own.local_offset[i], layout.tensors()[i].numel});
    std::sort(r.begin(), r.end(), [](const auto& a, const auto& b) { return a.offset < b.offset; });
    std::vector<model::BufferRange> merged;
    for (const auto& x : r) {
      if (!merged.empty() && merged.back().offset + merged.back().count == x.offset) merged.back().count += x.count;
      else merged.push_back(x);
    }
    return merged;
  }
  std::vector<model::BufferRange> AllLocal() const { return {{0, own.local.total()}}; }

  // Device optimizer: the device's parameters and moments into the host buffers.
  void PullState() {
    if (device_step) device->GetState(params.data(), adamw->exp_avg().data(), adamw->exp_avg_sq().data());
  }

  // A GradReducer over communicator c's members, if it has more than one.
  std::unique_ptr<model::GradReducer> ReducerOver(comm::Communicator* c, std::chrono::milliseconds timeout) {
    if (c == nullptr || c->size() < 2) return nullptr;
    constexpr uint32_t kIdTag = (1u << 29) + 1;
    std::string id;
    if (c->rank() == 0) {
      id = device->NewExchangeId();
      for (int x = 1; x < c->size(); ++x) c->Isend(id.data(), id.size(), x, kIdTag)->Wait();
    } else {
      id.resize(device->NewExchangeIdBytes());
      c->Irecv(id.data(), id.size(), 0, kIdTag)->Wait();
    }
    return device->NewGradReducer(id, c->rank(), c->size(), timeout);
  }

  void Connect() {
    std::vector<int> members;
    for (int x = 0; x < P; ++x) members.push_back(placement.GlobalRank(group, x));
    const std::string g = std::to_string(group);
    dispatch = world->Group("dispatch-" + g, members);
    combine = world->Group("combine-" + g, members);
    if (placement.IsAttention(rank)) {
      std::vector<int> attention;
      for (int gg = 0; gg < placement.groups; ++gg)
        for (int x = 0; x < M; ++x) attention.push_back(placement.GlobalRank(gg, x));
      dense = world->Group("dense", attention);
    }
    std::vector<int> same_local;
    for (int gg = 0; gg < placement.groups; ++gg)
      same_local.push_back(placement.GlobalRank(gg, placement.LocalOf(rank)));
    replicas = world->Group("replicas-" + std::to_string(placement.LocalOf(rank)), same_local);
    std::vector<int> all;
    for (int r = 0; r < placement.world_size(); ++r) all.push_back(r);
    everyone = world->Group("world", all);
  }

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
  void WaitGroup(Channel c, int l, int j, const char* what) {
    const int64_t g = Posted(c, l, j);
    if (g < 0) throw Error(std::string("engine: waiting for ") + what + " that was never posted");
    Waited([&] { exchange->Wait(g); }, c == Channel::kRows || c == Channel::kOutputGrads, what, l, j);
  }
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
  void Send(comm::Communicator* c, const void* data, size_t bytes, int peer, uint32_t tag) {
    if (peer != placement.LocalOf(rank)) bytes_sent += static_cast<double>(bytes);  // not the self-mailbox
    sends.push_back(c->Isend(data, bytes, peer, tag));
  }

  // Calls fn(owner, range, first row, rows) for every owner of layer l that
  // holds experts, over micro-batch j's plan.
  template <typename Fn>
  void ForEachOwner(int l, int j, Fn fn) {
    const ops::DispatchPlan& plan = micro[j]->plan(l);
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
  void FanOutGradSums(int l, int j) {
    model::MicroBatchStages& mb = *micro[j];
    ForEachOwner(l, j, [&](int o, const ExpertRange&, int64_t row0, int64_t rows) {
      if (rows == 0) return;
      wire::ScatterSums(dedups[Idx(l, j, o)], grad_sums[Idx(l, j, o)].data(), d,
                        mb.dispatched_grads(l).data() + row0 * d);
    });
  }

  // The header (and, over Gloo, the rows) of micro-batch j's layer-l block
  // for each owner; with the NCCL transport the rows go in one exchange
  // group with this rank's own receives of that block as an owner.
  void PostDispatch(int l, int j) {
    model::MicroBatchStages& mb = *micro[j];
    const ops::DispatchPlan& plan = mb.plan(l);
    std::vector<model::RowExchange::Send> sends;
    ForEachOwner(l, j, [&](int o, const ExpertRange& r, int64_t row0, int64_t rows) {
      std::vector<char>& box = outbox[Idx(l, j, o)];
      Dedup* dd = nullptr;
      if (dedup) {
        dd = &dedups[Idx(l, j, o)];
        unique_of.resize(plan.tokens, -1);
        wire::MakeDedup(plan.token_of_row, row0, rows, unique_of, dd);
      }
      if (exchange) {
        wire::PackDispatch(plan.counts.data() + r.first, r.count, nullptr, rows, 0, dd, &box);
        Send(dispatch.get(), box.data(), box.size(), o, Tag(kRows, l, j));
        if (rows == 0) return;
        model::RowExchange::Send s;
        s.peer = o;
        s.rows = mb.device_rows(l).xp + row0 * d;
        s.count = dd ? dd->uniques() : rows;
        if (dd) s.pick.assign(dd->first.begin(), dd->first.end());
        sends.push_back(std::move(s));
        return;
      }
      wire::PackDispatch(plan.counts.data() + r.first, r.count, mb.dispatched(l).data() + row0 * d, rows, d, dd, &box);
      Send(dispatch.get(), box.data(), box.size(), o, Tag(kRows, l, j));
      if (rows > 0)
        outputs_in[Idx(l, j, o)] = combine->Irecv(mb.expert_outputs(l).data() + row0 * d,
                                                  rows * d * sizeof(float), o, Tag(kOutputs, l, j));
    });
    if (!exchange) return;
    PostGroup(Channel::kRows, l, j, std::move(sends), OwnsLayer(l) ? OwnerRowRecvs(l, j) : Recvs{});
    if (!OwnsLayer(l)) PostGroup(Channel::kOutputs, l, j, {}, AttentionOutputRecvs(l, j));
  }

  void FinishCombine(int l, int j) {
    if (exchange) WaitGroup(Channel::kOutputs, l, j, "combine");
    else WaitFromOwners(outputs_in, l, j, "combine");
  }

  void PostBackwardDispatch(int l, int j) {
    model::MicroBatchStages& mb = *micro[j];
    if (exchange) {
      std::vector<model::RowExchange::Send> sends;
      ForEachOwner(l, j, [&](int o, const ExpertRange&, int64_t row0, int64_t rows) {
        if (rows == 0) return;
        model::RowExchange::Send s;
        s.peer = o;
        s.rows = mb.device_rows(l).dy + row0 * d;
        s.count = rows;
        sends.push_back(std::move(s));
      });
      PostGroup(Channel::kOutputGrads, l, j, std::move(sends), OwnsLayer(l) ? OwnerOutputGradRecvs(l, j) : Recvs{});
      if (!OwnsLayer(l)) PostGroup(Channel::kInputGrads, l, j, {}, AttentionInputGradRecvs(l, j));
      return;
    }
    ForEachOwner(l, j, [&](int o, const ExpertRange&, int64_t row0, int64_t rows) {
      if (rows == 0) return;
      Send(dispatch.get(), mb.expert_output_grads(l).data() + row0 * d, rows * d * sizeof(float), o,
           Tag(kOutputGrads, l, j));
      if (!dedup) {
        input_grads_in[Idx(l, j, o)] = combine->Irecv(mb.dispatched_grads(l).data() + row0 * d,
                                                      rows * d * sizeof(float), o, Tag(kInputGrads, l, j));
      } else {
        // The owner sums each token's input grads: one row per unique token.
        std::vector<float>& sums = grad_sums[Idx(l, j, o)];
        sums.resize(dedups[Idx(l, j, o)].uniques() * d);
        input_grads_in[Idx(l, j, o)] = combine->Irecv(sums.data(), sums.size() * sizeof(float), o,
                                                      Tag(kInputGrads, l, j));
      }
    });
  }

  // --- the NCCL transport's groups ---
  // Each channel's groups are posted in the schedule's (layer, micro-batch)
  // order on every rank, each with all of this rank's sends and receives of
  // it (RowExchange): at the first moment the rank has its sends ready, or,
  // with none, when it first needs the receives.
  using Recvs = std::vector<model::RowExchange::Recv>;
  void PostGroup(Channel c, int l, int j, std::vector<model::RowExchange::Send> sends, Recvs recvs) {
    const int local = placement.LocalOf(rank);
    for (const auto& s : sends)
      if (s.peer != local) bytes_sent += static_cast<double>(s.count * d * exchange->wire_value_bytes());
    Posted(c, l, j) = exchange->Post(c, std::move(sends), std::move(recvs));
  }

  // Owner: the rows of (l, j) from every attention rank, fanned out.
  Recvs OwnerRowRecvs(int l, int j) {
    Recvs recvs;
    for (int a = 0; a < M; ++a) {
      ReadHeader(l, j, a);
      OwnerSlot& s = slots[Idx(l, j, a)];
      if (s.rows == 0) continue;
      model::RowExchange::Recv r;
      r.peer = a;
      r.count = dedup ? s.uniques : s.rows;
      r.rows = s.dev.xp;
      r.n = s.rows;
      if (dedup) r.index = s.index;
      recvs.push_back(std::move(r));
    }
    return recvs;
  }
  // Attention: the expert outputs of (l, j) from every owner.
  Recvs AttentionOutputRecvs(int l, int j) {
    Recvs recvs;
    model::MicroBatchStages& mb = *micro[j];
    ForEachOwner(l, j, [&](int o, const ExpertRange&, int64_t row0, int64_t rows) {
      if (rows == 0) return;
      model::RowExchange::Recv r;
      r.peer = o;
      r.count = r.n = rows;
      r.rows = mb.device_rows(l).y + row0 * d;
      recvs.push_back(std::move(r));
    });
    return recvs;
  }
  // Owner: the output grads of (l, j) from every attention rank.
  Recvs OwnerOutputGradRecvs(int l, int j) {
    Recvs recvs;
    for (int a = 0; a < M; ++a) {
      OwnerSlot& s = slots[Idx(l, j, a)];
      if (s.rows == 0) continue;
      model::RowExchange::Recv r;
      r.peer = a;
      r.count = r.n = s.rows;
      r.rows = s.dev.dy;
      recvs.push_back(std::move(r));
    }
    return recvs;
  }
  // Attention: the input grads of (l, j) from every owner; with dedup one
  // row per unique token, put on the token's first row (zeros elsewhere).
  Recvs AttentionInputGradRecvs(int l, int j) {
    Recvs recvs;
    model::MicroBatchStages& mb = *micro[j];
    ForEachOwner(l, j, [&](int o, const ExpertRange&, int64_t row0, int64_t rows) {
      if (rows == 0) return;
      model::RowExchange::Recv r;
      r.peer = o;
      r.n = rows;
      r.rows = mb.device_rows(l).dxp + row0 * d;
      if (dedup) {
        const Dedup& dd = dedups[Idx(l, j, o)];
        r.count = dd.uniques();
        r.index = dd.index;
        r.first_only = true;
      } else {
        r.count = rows;
      }
      recvs.push_back(std::move(r));
    });
    return recvs;
  }

  void RunAttention(const Task& t, const backend::StepInput& step, float loss_scale) {
    const int l = t.layer, j = t.micro;
    model::MicroBatchStages& mb = *micro[j];
    switch (t.kind) {
      case Task::Kind::kAttnFwd:
        if (l > 0) FinishCombine(l - 1, j);
        Compute(t, emulation.attention, [&] {
          if (l == 0) {
            const int64_t per = step.global_batch / step.micro_batches;
            const int64_t m = placement.MicroBatchOf(rank, j);
            mb.EmbedForward({step.inputs + m * micro_tokens, step.targets + m * micro_tokens, per, step.seq_len});
          } else {
            mb.CombineForward(l - 1);
          }
          mb.AttentionForward(l);
        });
        PostDispatch(l, j);
        break;
      case Task::Kind::kHead:
        FinishCombine(L - 1, j);
        Compute(t, emulation.attention, [&] {
          mb.CombineForward(L - 1);
          const model::LossParts loss = mb.HeadForward();
          loss_sum += loss.total;
          ce_sum += loss.ce;
          aux_sum += loss.aux;
          const auto counts = mb.ExpertCounts();
          for (int ll = 0; ll < L; ++ll)
            for (int64_t e = 0; e < E; ++e) expert_tokens[ll][e] += counts[ll][e];
          mb.HeadBackward(loss_scale);
          mb.CombineBackward(L - 1);
        });
        PostBackwardDispatch(L - 1, j);
        break;
      case Task::Kind::kAttnBwd:
        if (exchange) {
          WaitGroup(Channel::kInputGrads, l, j, "combine-grad");
        } else {
          WaitFromOwners(input_grads_in, l, j, "combine-grad");
          if (dedup) FanOutGradSums(l, j);
        }
        Compute(t, emulation.attention, [&] {
          mb.AttentionBackward(l);
          if (l > 0) mb.CombineBackward(l - 1);
          else mb.EmbedBackward();
        });
        if (l > 0) PostBackwardDispatch(l - 1, j);
        break;
      default:
        break;
    }
  }

  // --- owner side ---
  // Headers (and, over Gloo, rows) are received for the whole step up
  // front, into buffers sized for the most that can arrive: a token picks k
  // distinct experts, so it sends at most min(k, experts held) rows to this
  // owner, and with dedup the rows on the wire are at most one per token.
  int64_t MaxRows(const ExpertRange& r) const { return micro_tokens * std::min<int64_t>(k, r.count); }
  void PostOwnerReceives() {
    const int local = placement.LocalOf(rank);
    for (int l = 0; l < L; ++l) {
      const ExpertRange& r = Range(l, local);
      if (r.count == 0) continue;
      const int64_t max_rows = MaxRows(r);
      const int64_t on_wire = exchange ? 0 : dedup ? std::min(max_rows, micro_tokens) : max_rows;
      for (int j = 0; j < R; ++j)
        for (int a = 0; a < M; ++a) {
          OwnerSlot& s = slots[Idx(l, j, a)];
          s.inbox.resize(HeaderBytes(r.count, max_rows, dedup) + on_wire * d * sizeof(float));
          s.inbox_request = dispatch->Irecv(s.inbox.data(), s.inbox.size(), a, Tag(kRows, l, j));
        }
    }
  }

  // Waits for attention rank a's block of (l, j) and reads its header; over
  // Gloo the rows too (fanned out with dedup), with the NCCL transport the
  // block's device rows are made ready for the exchange to fill.
  void ReadHeader(int l, int j, int a) {
    const ExpertRange& r = Range(l, placement.LocalOf(rank));
    OwnerSlot& s = slots[Idx(l, j, a)];
    if (!s.inbox_request) return;  // read already
    Wait(s.inbox_request.get(), true, "dispatch", l, j);
    s.inbox_request.reset();
    wire::DispatchBlock block;
    try {
      block = wire::UnpackDispatch(s.inbox.data(), s.inbox.size(), r.count, MaxRows(r), exchange ? 0 : d, dedup);
    } catch (const Error& e) {
      throw Error("rank " + std::to_string(rank) + ": " + e.what() + " from rank " +
                  std::to_string(placement.GlobalRank(group, a)));
    }
    // The owner-side plan: counts over all E experts, zero outside the range.
    s.plan = ops::DispatchPlan{};
    s.plan.experts = E;
    s.plan.slots = 1;
    s.plan.counts.assign(E, 0);
    std::copy(block.counts.begin(), block.counts.end(), s.plan.counts.begin() + r.first);
    s.plan.offsets.assign(E + 1, 0);
    for (int64_t e = 0; e < E; ++e) s.plan.offsets[e + 1] = s.plan.offsets[e] + s.plan.counts[e];
    s.rows = block.rows;
    s.plan.tokens = s.rows;
    s.uniques = block.uniques;
    s.index = std::move(block.index);
    if (exchange) {
      if (s.rows == 0) return;
      if (!s.block) s.block = device->NewExpertBlock();
      s.dev = s.block->PrepareOnDevice(l, s.plan, r.first, r.count);
      return;
    }
    s.x = block.data;
    if (dedup) {
      // Fan the unique tokens out to their rows.
      s.xp.resize(s.rows * d);
      block.index = s.index;
      wire::FanOut(block, d, s.xp.data());
      s.x = s.xp.data();
    }
  }

  void RunOwner(const Task& t) {
    const int l = t.layer, j = t.micro;
    const ExpertRange& r = Range(l, placement.LocalOf(rank));
    if (t.kind == Task::Kind::kExpFwd) {
      if (exchange) {
        if (Posted(Channel::kRows, l, j) < 0) PostGroup(Channel::kRows, l, j, {}, OwnerRowRecvs(l, j));
        WaitGroup(Channel::kRows, l, j, "dispatch");
      } else {
        for (int a = 0; a < M; ++a) ReadHeader(l, j, a);
      }
      Compute(t, emulation.experts, [&] {
        for (int a = 0; a < M; ++a) {
          OwnerSlot& s = slots[Idx(l, j, a)];
          if (s.rows == 0) continue;
          if (exchange) {
            s.block->ForwardOnDevice();
            continue;
          }
          if (!s.block) s.block = device->NewExpertBlock();
          s.y = s.block->Forward(l, s.plan, r.first, r.count, s.x);
        }
      });
      if (exchange) {
        std::vector<model::RowExchange::Send> sends;
        for (int a = 0; a < M; ++a) {
          OwnerSlot& s = slots[Idx(l, j, a)];
          if (s.rows == 0) continue;
          model::RowExchange::Send out;
          out.peer = a;
          out.rows = s.dev.y;
          out.count = s.rows;
          sends.push_back(std::move(out));
        }
        PostGroup(Channel::kOutputs, l, j, std::move(sends),
                  placement.IsAttention(rank) ? AttentionOutputRecvs(l, j) : Recvs{});
        return;
      }
      for (int a = 0; a < M; ++a) {
        OwnerSlot& s = slots[Idx(l, j, a)];
        if (s.rows == 0) continue;
        Send(combine.get(), s.y, s.rows * d * sizeof(float), a, Tag(kOutputs, l, j));
        s.dy.resize(s.rows * d);
        s.dy_request = dispatch->Irecv(s.dy.data(), s.rows * d * sizeof(float), a, Tag(kOutputGrads, l, j));
      }
      return;
    }
    // kExpBwd
    if (exchange) {
      if (Posted(Channel::kOutputGrads, l, j) < 0)
        PostGroup(Channel::kOutputGrads, l, j, {}, OwnerOutputGradRecvs(l, j));
      WaitGroup(Channel::kOutputGrads, l, j, "dispatch-grad");
    } else {
      for (int a = 0; a < M; ++a) {
        OwnerSlot& s = slots[Idx(l, j, a)];
        if (s.rows == 0) continue;
        Wait(s.dy_request.get(), true, "dispatch-grad", l, j);
        s.dy_request.reset();
      }
    }
    Compute(t, emulation.experts, [&] {
      for (int a = 0; a < M; ++a) {
        OwnerSlot& s = slots[Idx(l, j, a)];
        if (s.rows == 0) continue;
        if (exchange) s.block->BackwardOnDevice();
        else s.dxp = s.block->Backward(s.dy.data());
      }
    });
    if (exchange) {
      std::vector<model::RowExchange::Send> sends;
      for (int a = 0; a < M; ++a) {
        OwnerSlot& s = slots[Idx(l, j, a)];
        if (s.rows == 0) continue;
        model::RowExchange::Send out;
        out.peer = a;
        out.rows = s.dev.dxp;
        out.count = s.rows;
        if (dedup) {
          // One row per unique token: the sum of its rows' input grads.
          out.count = s.uniques;
          wire::RowsByUnique(s.index, s.uniques, &out.sum_start, &out.sum_rows);
        }
        sends.push_back(std::move(out));
      }
      PostGroup(Channel::kInputGrads, l, j, std::move(sends),
                placement.IsAttention(rank) ? AttentionInputGradRecvs(l, j) : Recvs{});
      return;
    }
    for (int a = 0; a < M; ++a) {
      OwnerSlot& s = slots[Idx(l, j, a)];
      if (s.rows == 0) continue;
      if (!dedup) {
        Send(combine.get(), s.dxp, s.rows * d * sizeof(float), a, Tag(kInputGrads, l, j));
        continue;
      }
      // One row per unique token: the sum of its rows' input grads.
      s.dx_sums.resize(s.uniques * d);
      wire::SumByUnique(s.index, s.uniques, s.dxp, d, s.dx_sums.data());
      Send(combine.get(), s.dx_sums.data(), s.dx_sums.size() * sizeof(float), a, Tag(kInputGrads, l, j));
    }
  }

  // Sums the listed tensors' gradients over a communicator, packed.
  void AllReduceTensors(comm::Communicator* c, const std::vector<size_t>& tensors) {
    if (!c || c->size() == 1 || tensors.empty()) return;
    size_t n = 0;
    for (size_t i : tensors) n += layout.tensors()[i].numel;
    std::vector<float> packed(n);
    size_t at = 0;
    for (size_t i : tensors) {
      const auto& t = layout.tensors()[i];
      std::memcpy(packed.data() + at, Grad(i), t.numel * sizeof(float));
      at += t.numel;
    }
    c->AllReduceSum(packed.data(), n);
    at = 0;
    for (size_t i : tensors) {
      const auto& t = layout.tensors()[i];
      std::memcpy(Grad(i), packed.data() + at, t.numel * sizeof(float));
      at += t.numel;
    }
  }
};

DistributedBackend::DistributedBackend(const io::MixtralConfig& config,
                                       const model::ParameterLayout& layout,
                                       const Placement& placement, comm::World* world,
                                       const optim::AdamWOptions& adamw, Emulation emulation,
                                       Tracer* tracer, const StageDeviceFactory& make_device)
    : impl_(std::make_unique<Impl>(config, layout, placement, world, adamw, emulation, tracer, make_device)),
      rank_(world->rank()) {}

DistributedBackend::~DistributedBackend() = default;

void DistributedBackend::Upload(const backend::HostState& s) {
  Impl& m = *impl_;
  const int64_t n = static_cast<int64_t>(s.params.size());
  const bool whole = n == m.layout.total();
  if ((!whole && n != m.own.local.total()) || static_cast<int64_t>(s.exp_avg.size()) != n ||
      static_cast<int64_t>(s.exp_avg_sq.size()) != n)
    throw Error("distributed upload: a state of " + std::to_string(n) + " parameters is neither the whole model (" +
                std::to_string(m.layout.total()) + ") nor this rank's tensors (" + std::to_string(m.own.local.total()) + ")");
  const auto& ts = m.layout.tensors();
  std::vector<size_t> all;
  for (size_t i = 0; i < ts.size(); ++i) {
    if (!m.own.owned[i]) continue;
    const int64_t at = m.own.local_offset[i];
    const int64_t from = whole ? ts[i].offset : at;
    std::copy_n(s.params.begin() + from, ts[i].numel, m.params.begin() + at);  // in place: the CPU device aliases it
    std::copy_n(s.exp_avg.begin() + from, ts[i].numel, m.adamw->exp_avg().begin() + at);
    std::copy_n(s.exp_avg_sq.begin() + from, ts[i].numel, m.adamw->exp_avg_sq().begin() + at);
    all.push_back(all.size());
  }
  m.adamw->set_step(s.optimizer_step);
  if (m.device_step) m.device->SetState(m.params.data(), m.adamw->exp_avg().data(), m.adamw->exp_avg_sq().data(),
                                        s.optimizer_step);
  else m.device->SetParams(m.params.data(), all);
}

void DistributedBackend::Download(backend::HostState* s) {
  Impl& m = *impl_;
  m.PullState();
  // Rank 0 gathers group 0's experts (params and both moments) from their owners.
  if (m.group != 0) return;
  const auto& ts = m.layout.tensors();
  const uint32_t tag = 1u << 30;
  auto pack_size = [&](const std::vector<size_t>& list) {
    size_t n = 0;
    for (size_t i : list) n += ts[i].numel;
    return 3 * n;
  };
  const std::vector<float>* mine[] = {&m.params, &m.adamw->exp_avg(), &m.adamw->exp_avg_sq()};
  if (rank_ == 0) {
    for (std::vector<float>* dst : {&s->params, &s->exp_avg, &s->exp_avg_sq}) dst->assign(m.layout.total(), 0.0f);
    s->optimizer_step = m.adamw->step();
    std::vector<float>* whole[] = {&s->params, &s->exp_avg, &s->exp_avg_sq};
    for (size_t i = 0; i < ts.size(); ++i) {
      if (!m.own.owned[i]) continue;
      for (int b = 0; b < 3; ++b)
        std::copy_n(mine[b]->begin() + m.own.local_offset[i], ts[i].numel, whole[b]->begin() + ts[i].offset);
    }
    for (int o = 1; o < m.P; ++o) {
      const auto& list = m.own.group_experts[o];
      if (list.empty()) continue;
      std::vector<float> buf(pack_size(list));
      m.everyone->Irecv(buf.data(), buf.size() * sizeof(float), o, tag)->Wait();
      size_t at = 0;
      for (std::vector<float>* dst : whole)
        for (size_t i : list) {
          std::memcpy(dst->data() + ts[i].offset, buf.data() + at, ts[i].numel * sizeof(float));
          at += ts[i].numel;
        }
    }
  } else if (!m.own.owned_expert_tensors.empty()) {
    std::vector<float> buf;
    buf.reserve(pack_size(m.own.owned_expert_tensors));
    for (const std::vector<float>* src : mine)
      for (size_t i : m.own.owned_expert_tensors) {
        const auto begin = src->begin() + m.own.local_offset[i];
        buf.insert(buf.end(), begin, begin + ts[i].numel);
      }
    m.everyone->Isend(buf.data(), buf.size() * sizeof(float), 0, tag)->Wait();
  }
}

const std::vector<int64_t>& DistributedBackend::RankStateBytes() const { return impl_->rank_state_bytes; }

void DistributedBackend::StreamCheckpoint(const std::function<void(const TensorFetch& fetch)>& write) {
  Impl& m = *impl_;
  if (m.group != 0) return;
  m.PullState();
  constexpr uint32_t kRequest = (1u << 30) + 1, kReply = (1u << 30) + 2;
  const auto& ts = m.layout.tensors();
  const std::vector<float>* mine[] = {&m.params, &m.adamw->exp_avg(), &m.adamw->exp_avg_sq()};
  if (rank_ != 0) {
    // Serve rank 0's requests: {tensor, buffer}, or tensor -1 when it is done.
    for (;;) {
      int64_t request[2];
      m.everyone->Irecv(request, sizeof request, 0, kRequest)->Wait();
      if (request[0] < 0) return;
      const size_t i = static_cast<size_t>(request[0]);
      if (i >= ts.size() || !m.own.owned[i] || request[1] < 0 || request[1] > 2)
        throw Error("checkpoint: rank 0 asked rank " + std::to_string(rank_) + " for a tensor it does not hold");
      m.everyone->Isend(mine[request[1]]->data() + m.own.local_offset[i], ts[i].numel * sizeof(float), 0, kReply)->Wait();
    }
  }
  std::vector<int> owner(ts.size(), -1);  // group 0's local rank holding each tensor rank 0 lacks
  for (int o = 1; o < m.P; ++o)
    for (size_t i : m.own.group_experts[o]) owner[i] = o;
  const TensorFetch fetch = [&](size_t i, int buffer, float* out) {
    if (m.own.owned[i]) {
      std::copy_n(mine[buffer]->data() + m.own.local_offset[i], ts[i].numel, out);
      return;
    }
    if (owner[i] < 0) throw Error("checkpoint: no rank of group 0 holds " + ts[i].name);
    const int peer = m.placement.GlobalRank(0, owner[i]);
    const int64_t request[2] = {static_cast<int64_t>(i), buffer};
    m.everyone->Isend(request, sizeof request, peer, kRequest)->Wait();
    m.everyone->Irecv(out, ts[i].numel * sizeof(float), peer, kReply)->Wait();
  };
  auto release = [&] {
    const int64_t done[2] = {-1, 0};
    for (int o = 1; o < m.P; ++o) m.everyone->Isend(done, sizeof done, m.placement.GlobalRank(0, o), kRequest)->Wait();
  };
  try {
    if (write) write(fetch);
  } catch (...) {
    release();
    throw;
  }
  release();
}

const std::vector<bool>& DistributedBackend::OwnedTensors() const { return impl_->own.owned; }

double DistributedBackend::LossScale() const { return impl_->last_loss_scale; }

int64_t DistributedBackend::SkippedSteps() const { return impl_->skipped_steps; }

backend::StepLoss DistributedBackend::ComputeGradients(const backend::StepInput& step) {
  Impl& m = *impl_;
  if (step.micro_batches != m.placement.micro_batches)
    throw Error("distributed step: micro_batches changed from the placement's");
  const auto start = Clock::now();
  m.device->ZeroGrads();
  m.micro_tokens = step.global_batch / step.micro_batches * step.seq_len;
  m.loss_sum = m.ce_sum = m.aux_sum = 0;
  m.expert_tokens.assign(m.L, std::vector<int64_t>(m.E, 0));
  m.idle = m.dispatch_wait = m.combine_wait = 0;
  m.bytes_sent = 0;
  const float loss_scale = 1.0f / static_cast<float>(step.micro_batches);

  m.posted.assign(static_cast<size_t>(model::RowExchange::kChannels) * m.L * m.R, -1);
  m.PostOwnerReceives();
  for (const Task& t : m.order) {
    if (t.kind == Task::Kind::kExpFwd || t.kind == Task::Kind::kExpBwd) m.RunOwner(t);
    else m.RunAttention(t, step, loss_scale);
  }
  for (auto& s : m.sends) s->Wait();
  m.sends.clear();
  if (m.exchange) m.exchange->WaitAll();
  if (!m.device_step) m.device->GetGrads(m.grads.data());
  const double wall = Seconds(start, Clock::now());
  // fp16: an overflow anywhere is every rank's (one sum with the losses
  // below). Without loss scaling the verdict is not used: no scan.
  double nonfinite = 0;
  if (m.device->ScalesLoss() && m.device_step) {
    nonfinite = std::isfinite(m.device->GradSquares(m.AllLocal())) ? 0 : 1;
  } else if (m.device->ScalesLoss()) {
    for (float g : m.grads)
      if (!std::isfinite(g)) {
        nonfinite = 1;
        break;
      }
  }

  // Gradients: dense over every attention rank, experts over the groups.
  std::vector<size_t> owned_dense;
  if (m.placement.IsAttention(rank_)) owned_dense = m.own.dense_tensors;
  if (m.device_step) {
    if (m.dense_sums && !owned_dense.empty()) m.dense_sums->Sum(m.Ranges(owned_dense));
    if (m.replica_sums && !m.own.owned_expert_tensors.empty()) m.replica_sums->Sum(m.Ranges(m.own.owned_expert_tensors));
  } else {
    m.AllReduceTensors(m.dense.get(), owned_dense);
    m.AllReduceTensors(m.replicas.get(), m.own.owned_expert_tensors);
  }

  // Losses, routing counts and idle time, summed over the world.
  const bool attention = m.placement.IsAttention(rank_);
  std::vector<double> sums = {m.loss_sum, m.ce_sum, m.aux_sum,
                              attention ? m.idle : 0.0, attention ? wall : 0.0,
                              attention ? 0.0 : m.idle, attention ? 0.0 : wall,
                              m.dispatch_wait, m.combine_wait, m.bytes_sent, nonfinite};
  for (const auto& layer : m.expert_tokens)
    for (int64_t c : layer) sums.push_back(static_cast<double>(c));
  m.everyone->AllReduceSum(sums.data(), sums.size());

  backend::StepLoss out;
  out.loss = sums[0] / step.micro_batches;
  out.ce = sums[1] / step.micro_batches;
  out.aux = sums[2] / step.micro_batches;
  out.has_parallel_stats = true;
  out.bubble_attention = sums[4] > 0 ? sums[3] / sums[4] : 0;
  out.bubble_expert = sums[6] > 0 ? sums[5] / sums[6] : 0;
  out.dispatch_wait_seconds = sums[7];
  out.combine_wait_seconds = sums[8];
  out.exchange_bytes = sums[9];
  out.rank_state_bytes = m.rank_state_bytes;
  out.expert_tokens.assign(m.L, std::vector<int64_t>(m.E));
  for (int l = 0; l < m.L; ++l)
    for (int64_t e = 0; e < m.E; ++e)
      out.expert_tokens[l][e] = static_cast<int64_t>(sums[11 + l * m.E + e]);
  // Loss scaling: every rank gets the same verdict, so the scales stay equal.
  const double scale = m.device->LossScale();
  m.last_loss_scale = scale;
  m.apply_step = m.device->UpdateLossScale(sums[10] > 0);
  if (!m.apply_step) ++m.skipped_steps;
  if (m.apply_step && scale != 1.0) {
    const float unscale = static_cast<float>(1.0 / scale);
    if (m.device_step) m.device->ScaleGrads(unscale);
    else
      for (float& g : m.grads) g *= unscale;
  }
  return out;
}

double DistributedBackend::ClipGradNorm(double max_norm) {
  Impl& m = *impl_;
  double sq = 0;
  const auto& ts = m.layout.tensors();
  if (m.device_step) {
    std::vector<size_t> counted;
    for (size_t i = 0; i < ts.size(); ++i)
      if (m.own.counted[i]) counted.push_back(i);
    sq = m.device->GradSquares(m.Ranges(counted));
  } else {
    for (size_t i = 0; i < ts.size(); ++i) {
      if (!m.own.counted[i]) continue;
      const float* g = m.Grad(i);
      for (int64_t x = 0; x < ts[i].numel; ++x) sq += static_cast<double>(g[x]) * g[x];
    }
  }
  m.everyone->AllReduceSum(&sq, 1);
  const double norm = std::sqrt(sq);
  if (max_norm > 0.0) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0 && m.device_step) {
      m.device->ScaleGrads(static_cast<float>(coef));
    } else if (coef < 1.0) {
      const float c = static_cast<float>(coef);
      for (size_t i = 0; i < ts.size(); ++i) {
        if (!m.own.owned[i]) continue;
        float* g = m.Grad(i);
        for (int64_t x = 0; x < ts[i].numel; ++x) g[x] *= c;
      }
    }
  }
  return norm;
}

void DistributedBackend::OptimizerStep(double lr) {
  Impl& m = *impl_;
  if (!m.apply_step) return;  // an overflow: parameters, moments and the AdamW step stay
  if (m.device_step) {
    m.device->AdamWStep(lr);  // every local tensor is owned
    m.adamw->set_step(m.adamw->step() + 1);
    return;
  }
  m.adamw->Step(m.params.data(), m.grads.data(), lr);  // every local tensor is owned
  std::vector<size_t> updated(m.own.local.tensors().size());
  for (size_t i = 0; i < updated.size(); ++i) updated[i] = i;
  m.device->SetParams(m.params.data(), updated);
}


void DistributedBackend::SetDedup(bool on) { impl_->dedup = on; }

std::string DistributedBackend::SetTransport(const std::string& transport, std::chrono::milliseconds timeout) {
  Impl& m = *impl_;
  if (transport != "auto" && transport != "nccl" && transport != "gloo")
    throw Error("parallel.transport: '" + transport + "' is not auto, nccl or gloo");
  // Every rank must take the same path: NCCL only when every device has it.
  double without = m.device->HasRowExchange() ? 0.0 : 1.0;
  m.everyone->AllReduceSum(&without, 1);
  if (transport == "gloo" || (transport == "auto" && without > 0)) return "gloo";
  if (without > 0)
    throw Error("parallel.transport: nccl needs train.device cuda on every rank with NCCL (" +
                std::to_string(static_cast<int>(without)) + " of " + std::to_string(m.placement.world_size()) +
                " ranks have no NCCL-capable device; this one runs on " + m.device->name() + ")");
  // The group's local rank 0 makes one NCCL id per channel and hands them out.
  const int local = m.placement.LocalOf(rank_);
  constexpr uint32_t kIdTag = 1u << 29;
  std::vector<std::string> ids;
  std::string packed;
  if (local == 0) {
    for (int c = 0; c < model::RowExchange::kChannels; ++c) {
      ids.push_back(m.device->NewExchangeId());
      packed += ids.back();
    }
    for (int x = 1; x < m.P; ++x) m.dispatch->Isend(packed.data(), packed.size(), x, kIdTag)->Wait();
  } else {
    const size_t each = m.device->NewExchangeIdBytes();
    packed.resize(each * model::RowExchange::kChannels);
    m.dispatch->Irecv(packed.data(), packed.size(), 0, kIdTag)->Wait();
    for (int c = 0; c < model::RowExchange::kChannels; ++c) ids.push_back(packed.substr(c * each, each));
  }
  m.exchange = m.device->NewRowExchange(ids, local, m.P, timeout);
  for (auto& mb : m.micro) mb->SetHostRows(false);
  // The optimizer step moves to the device with the rows.
  if (!m.device->HasOptimizer()) throw Error("parallel.transport nccl: " + m.device->name() + " has no optimizer");
  m.dense_sums = m.ReducerOver(m.dense.get(), timeout);
  m.replica_sums = m.ReducerOver(m.replicas.get(), timeout);
  m.device->SetState(m.params.data(), m.adamw->exp_avg().data(), m.adamw->exp_avg_sq().data(), m.adamw->step());
  m.device_step = true;
  return "nccl (" + m.exchange->wire_format() + " on the wire; gradient sums and AdamW on the GPU)";
}

std::string DistributedBackend::name() const { return "distributed on " + impl_->device->name(); }


}  // namespace hetermoe::parallel
