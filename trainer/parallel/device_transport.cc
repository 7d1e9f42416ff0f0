// The distributed engine's NCCL transport (engine_impl.h): choosing it
// (SetTransport), and the exchange groups each task posts, so that every
// rank posts a channel's groups in the schedule's order.
#include "trainer/parallel/engine_impl.h"

#include <cstdio>

#include "common/error.h"

namespace hetermoe::parallel {

// Waits for an exchange group (NCCL transport).
void DistributedBackend::Impl::WaitGroup(Channel c, int l, int j, const char* what) {
  const int64_t g = Posted(c, l, j);
  if (g < 0) throw Error(std::string("engine: waiting for ") + what + " that was never posted");
  Waited([&] { exchange->Wait(g); }, c == Channel::kRows || c == Channel::kOutputGrads, what, l, j);
}

void DistributedBackend::Impl::PostGroup(Channel c, int l, int j, std::vector<model::RowExchange::Send> sends,
                                         Recvs recvs) {
  const int local = placement.LocalOf(rank);
  for (const auto& s : sends)
    if (s.peer != local) bytes_sent += static_cast<double>(s.count * d * exchange->wire_value_bytes());
  Posted(c, l, j) = exchange->Post(c, std::move(sends), std::move(recvs));
}

// Owner: the rows of (l, j) from every attention rank, fanned out.
DistributedBackend::Impl::Recvs DistributedBackend::Impl::OwnerRowRecvs(int l, int j) {
  Recvs recvs;
  for (int a = 0; a < M; ++a) {
    ReadHeader(l, j, a);
    OwnerSlot& s = slots[Idx(l, j, a)];
    if (const NodeRoute* route = RouteOf(l, j, a, placement.LocalOf(rank))) {
      // Node dedup: the first owner takes the node's unique rows (and relays
      // them, PostRelayRows); the others get theirs from it.
      const Relay& rl = relays[Idx(l, j, a)];
      if (route->owners[0] != placement.LocalOf(rank) || rl.rows == 0) continue;
      model::RowExchange::Recv r;
      r.peer = a;
      r.count = r.n = rl.uniques;
      r.rows = RelayScratch(relay_rows, a, rl.uniques);  // relayed by PostRelayRows, then reused
      recvs.push_back(std::move(r));
      continue;
    }
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
DistributedBackend::Impl::Recvs DistributedBackend::Impl::AttentionOutputRecvs(int l, int j) {
  Recvs recvs;
  model::MicroBatchStages& mb = Micro(j);
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
DistributedBackend::Impl::Recvs DistributedBackend::Impl::OwnerOutputGradRecvs(int l, int j) {
  Recvs recvs;
  ForEachSlot(l, j, [&](int a, OwnerSlot& s) {
    model::RowExchange::Recv r;
    r.peer = a;
    r.count = r.n = s.rows;
    r.rows = s.dev.dy;
    recvs.push_back(std::move(r));
  });
  return recvs;
}

// Attention: the input grads of (l, j) from every owner; with dedup one
// row per unique token, put on the token's first row (zeros elsewhere).
DistributedBackend::Impl::Recvs DistributedBackend::Impl::AttentionInputGradRecvs(int l, int j) {
  Recvs recvs;
  model::MicroBatchStages& mb = Micro(j);
  const int me = placement.LocalOf(rank);
  ForEachOwner(l, j, [&](int o, const ExpertRange&, int64_t row0, int64_t rows) {
    if (rows == 0 || RouteOf(l, j, me, o)) return;  // a route's owners answer through its first owner
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
  // Node dedup: one row per node token from each route's first owner.
  if (ViaNode(l, j, me)) {
    const ops::DispatchPlan& plan = mb.plan(l);
    for (size_t i = 0; i < routes[l].size(); ++i) {
      const NodeRoute& route = routes[l][i];
      const Dedup& dd = node_dedups[Idx(l, j, static_cast<int>(i))];
      if (route.node == relay_group_of[me] || dd.index.empty()) continue;
      model::RowExchange::Recv r;
      r.peer = route.owners[0];
      r.n = static_cast<int64_t>(dd.index.size());
      r.rows = mb.device_rows(l).dxp + plan.offsets[route.first_expert] * d;
      r.count = dd.uniques();
      r.index = dd.index;
      r.first_only = true;
      recvs.push_back(std::move(r));
    }
  }
  return recvs;
}

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
  m.PlanGradientSums();
  if (m.own.zero) {  // ZeRO-1: the device keeps the moments of this rank's shard, packed as the host's
    std::vector<bool> local_moments(m.own.local.tensors().size(), false);
    for (size_t i = 0; i < m.own.owned.size(); ++i)
      if (m.own.owned[i]) local_moments[m.own.local_index[i]] = m.own.moments[i];
    m.device->SetMomentTensors(local_moments);
  }
  m.device->SetState(m.params.data(), m.adamw->exp_avg().data(), m.adamw->exp_avg_sq().data(), m.adamw->step());
  m.device_step = true;
  // dedup auto: the links that matter now are NCCL's; fit them again over it.
  if (m.depth == DedupDepth::kAuto && !m.links_given) {
    const std::string line = m.MeasureLinks();
    if (rank_ == 0) std::fprintf(stderr, "%s\n", line.c_str());
  }
  return "nccl (" + m.exchange->wire_format() + " on the wire; gradient sums and AdamW on the GPU)";
}

}  // namespace hetermoe::parallel
