// The distributed engine's expert-owner tasks (engine_impl.h): the dispatch
// headers (and, over Gloo, rows) from every attention rank, the experts'
// forward and backward, and the replies.
#include "trainer/parallel/engine_impl.h"

#include <algorithm>

#include "common/error.h"

namespace hetermoe::parallel {

void DistributedBackend::Impl::PostOwnerReceives() {
  const int local = placement.LocalOf(rank);
  for (int l = 0; l < L; ++l) {
    const ExpertRange& r = Range(l, local);
    if (r.count == 0) continue;
    for (int j = 0; j < R; ++j)
      for (int a = 0; a < M; ++a) {
        OwnerSlot& s = slots[Idx(l, j, a)];
        s.inbox.resize(InboxBytes(r.count, dedup));
        s.route_word = false;
        s.at = 0;
        const NodeRoute* route = RouteFor(l, a, local);
        if (route && depth == DedupDepth::kAuto) {
          // a chooses the depth per block: a word, then this owner's block
          // or (the first owner) the node's, or nothing (ReadHeader).
          size_t most = s.inbox.size();
          if (route->owners[0] == local) most = std::max(most, InboxBytes(route->experts, true));
          s.inbox.resize(wire::kRouteWordBytes + most);
          s.route_word = true;
          s.inbox_request = dispatch->Irecv(s.inbox.data(), s.inbox.size(), a, Tag(kRows, l, j));
        } else if (!route) {
          s.inbox_request = dispatch->Irecv(s.inbox.data(), s.inbox.size(), a, Tag(kRows, l, j));
        } else if (route->owners[0] != local) {  // relayed by the node's first owner
          s.inbox_request = dispatch->Irecv(s.inbox.data(), s.inbox.size(), route->owners[0], Tag(RelayRowsKind(a), l, j));
        } else {  // this rank relays: the node's block comes in
          Relay& rl = relays[Idx(l, j, a)];
          rl.inbox.resize(InboxBytes(route->experts, true));
          rl.at = 0;
          rl.request = dispatch->Irecv(rl.inbox.data(), rl.inbox.size(), a, Tag(kNodeRows, l, j));
          s.relay_pending = true;
        }
      }
  }
}

// Waits for attention rank a's block of (l, j) and reads its header; over
// Gloo the rows too (fanned out with dedup), with the NCCL transport the
// block's device rows are made ready for the exchange to fill.
void DistributedBackend::Impl::ReadHeader(int l, int j, int a) {
  const int me = placement.LocalOf(rank);
  const ExpertRange& r = Range(l, me);
  OwnerSlot& s = slots[Idx(l, j, a)];
  if (s.relay_pending) {
    s.relay_pending = false;
    RelayRows(l, j, a);
  } else {
    if (!s.inbox_request) return;  // read already
    Wait(s.inbox_request.get(), true, "dispatch", l, j);
    s.inbox_request.reset();
  }
  if (s.route_word) {  // kAuto: the depth a chose for this block
    s.route_word = false;
    wire::RouteBlock kind;
    try {
      kind = wire::ReadRouteWord(s.inbox.data(), s.inbox.size());
    } catch (const Error& e) {
      throw Error("rank " + std::to_string(rank) + ": " + e.what() + " from rank " +
                  std::to_string(placement.GlobalRank(group, a)));
    }
    via_node[Idx(l, j, a)] = kind == wire::RouteBlock::kOwn ? 0 : 1;
    const NodeRoute& route = *RouteFor(l, a, me);
    if (kind == wire::RouteBlock::kNode) {
      if (route.owners[0] != me)
        throw Error("rank " + std::to_string(rank) + ": a node block from rank " +
                    std::to_string(placement.GlobalRank(group, a)) + ", which is not its node's first owner");
      Relay& rl = relays[Idx(l, j, a)];
      rl.inbox.swap(s.inbox);
      rl.at = wire::kRouteWordBytes;
      RelayRows(l, j, a);  // this owner's own block into s.inbox
    } else if (kind == wire::RouteBlock::kRelayed) {
      if (route.owners[0] == me)
        throw Error("rank " + std::to_string(rank) + ": told its node's rows from rank " +
                    std::to_string(placement.GlobalRank(group, a)) + " are relayed, but it is the relay");
      s.inbox.resize(InboxBytes(r.count, true));
      Wait(dispatch->Irecv(s.inbox.data(), s.inbox.size(), route.owners[0], Tag(RelayRowsKind(a), l, j)).get(), true,
           "relay", l, j);
    } else {
      s.at = wire::kRouteWordBytes;  // this owner's own block follows the word
    }
  }
  wire::DispatchBlock block;
  try {
    block = wire::UnpackDispatch(s.inbox.data() + s.at, s.inbox.size() - s.at, r.count, MaxRows(r), exchange ? 0 : d,
                                 dedup);
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
    BeforeReusingBlock(l, j, a);
    s.dev = Block(l, j, a).PrepareOnDevice(l, s.plan, r.first, r.count);
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

void DistributedBackend::Impl::BeforeReusingBlock(int l, int j, int a) {
  if (j < W) return;
  for (auto& r : block_sends[BlockIdx(l, j, a)]) r->Wait();
  block_sends[BlockIdx(l, j, a)].clear();
  if (!exchange) return;
  for (Channel c : {Channel::kOutputs, Channel::kInputGrads, Channel::kRelaySums})
    if (const int64_t g = Posted(c, l, j - W); g >= 0) exchange->Wait(g);
}

void DistributedBackend::Impl::RunOwner(const Task& t) {
  const int l = t.layer, j = t.micro;
  const ExpertRange& r = Range(l, placement.LocalOf(rank));
  if (t.kind == Task::Kind::kExpFwd) {
    if (exchange) {
      if (Posted(Channel::kRows, l, j) < 0) PostGroup(Channel::kRows, l, j, {}, OwnerRowRecvs(l, j));
      WaitGroup(Channel::kRows, l, j, "dispatch");
      PostRelayRows(l, j);  // node dedup: the node's rows to its owners
    } else {
      for (int a = 0; a < M; ++a) ReadHeader(l, j, a);
    }
    Compute(t, emulation.experts, [&] {
      for (int a = 0; a < M; ++a) {
        OwnerSlot& s = slots[Idx(l, j, a)];
        if (s.rows == 0) continue;
        if (exchange) {
          Block(l, j, a).ForwardOnDevice();
          continue;
        }
        BeforeReusingBlock(l, j, a);
        s.y = Block(l, j, a).Forward(l, s.plan, r.first, r.count, s.x);
      }
    });
    if (exchange) {
      std::vector<model::RowExchange::Send> sends;
      ForEachSlot(l, j, [&](int a, OwnerSlot& s) {
        model::RowExchange::Send out;
        out.peer = a;
        out.rows = s.dev.y;
        out.count = s.rows;
        sends.push_back(std::move(out));
      });
      PostGroup(Channel::kOutputs, l, j, std::move(sends),
                placement.IsAttention(rank) ? AttentionOutputRecvs(l, j) : Recvs{});
      return;
    }
    for (int a = 0; a < M; ++a) {
      OwnerSlot& s = slots[Idx(l, j, a)];
      if (s.rows == 0) continue;
      Send(combine.get(), s.y, s.rows * d * sizeof(float), a, Tag(kOutputs, l, j), &block_sends[BlockIdx(l, j, a)]);
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
      if (exchange) Block(l, j, a).BackwardOnDevice();
      else s.dxp = Block(l, j, a).Backward(s.dy.data());
    }
  });
  PostFinishedGradients(Finished::kExperts, l, j);
  if (exchange) {
    std::vector<model::RowExchange::Send> sends;
    PostRelaySums(l, j, &sends);  // node dedup: the owners' sums to the first owner, its replies into `sends`
    ForEachSlot(l, j, [&](int a, OwnerSlot& s) {
      if (RouteOf(l, j, a, placement.LocalOf(rank))) return;
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
    });
    PostGroup(Channel::kInputGrads, l, j, std::move(sends),
              placement.IsAttention(rank) ? AttentionInputGradRecvs(l, j) : Recvs{});
    return;
  }
  for (int a = 0; a < M; ++a) {
    OwnerSlot& s = slots[Idx(l, j, a)];
    if (s.rows == 0) continue;
    if (!dedup) {
      Send(combine.get(), s.dxp, s.rows * d * sizeof(float), a, Tag(kInputGrads, l, j),
           &block_sends[BlockIdx(l, j, a)]);
      continue;
    }
    // One row per unique token: the sum of its rows' input grads.
    s.dx_sums.resize(s.uniques * d);
    wire::SumByUnique(s.index, s.uniques, s.dxp, d, s.dx_sums.data());
    if (const NodeRoute* route = RouteOf(l, j, a, placement.LocalOf(rank))) {
      // Node dedup: to the node's first owner, which adds the node's sums (RelaySums).
      if (route->owners[0] != placement.LocalOf(rank))
        Send(combine.get(), s.dx_sums.data(), s.dx_sums.size() * sizeof(float), route->owners[0],
             Tag(RelaySumsKind(a), l, j), &block_sends[BlockIdx(l, j, a)]);
      continue;
    }
    Send(combine.get(), s.dx_sums.data(), s.dx_sums.size() * sizeof(float), a, Tag(kInputGrads, l, j));
  }
  RelaySums(l, j);
}

}  // namespace hetermoe::parallel
