// HierMoE's node level of token deduplication (engine.h, SetDedup kNode),
// over the Gloo transport.
//
// For layer l, the expert ranks of one node that hold experts of it (two or
// more; their expert ranges are adjacent, placement.h) form a route. An
// attention rank on another node sends the route one dispatch block over
// the node's experts, deduplicated over all of them, to the route's first
// owner (the relay). The relay splits it into each owner's block, exactly
// what the attention rank would have sent that owner with rank-level dedup
// (wire::SplitNodeBlock), keeps its own and sends the others inside the
// node. Outputs and output grads travel directly between owner and
// attention rank, as at rank level. In backward each owner sends its
// per-token input-grad sums to the relay, which adds them into one row per
// node token (wire::AddToNodeSums) and sends that to the attention rank;
// there each sum goes on the token's first row among the node's rows.
//
// The relay runs inside its own ExpFwd(l, j) and ExpBwd(l, j) tasks: all
// owners of a layer run the same order, so the node's other owners wait for
// it at most as long as for the slowest of them.
#include "trainer/parallel/engine_impl.h"

#include <thread>

#include "common/error.h"

namespace hetermoe::parallel {

void DistributedBackend::SetDedup(DedupDepth depth, const std::vector<int>& node_of_rank) {
  Impl& m = *impl_;
  if (!node_of_rank.empty() && static_cast<int>(node_of_rank.size()) != m.placement.world_size())
    throw Error("dedup: " + std::to_string(node_of_rank.size()) + " nodes given for " +
                std::to_string(m.placement.world_size()) + " ranks");
  m.depth = depth;
  m.dedup = depth != DedupDepth::kOff;
  m.node_of.assign(m.P, 0);
  for (int x = 0; x < m.P; ++x)
    m.node_of[x] = node_of_rank.empty() ? x : node_of_rank[m.placement.GlobalRank(m.group, x)];
  m.MakeRoutes();
}

void DistributedBackend::Impl::MakeRoutes() {
  routes.clear();  // empty: no layer has a route
  if (depth != DedupDepth::kNode || placement.schedule == Schedule::kEp) return;
  routes.assign(L, {});
  for (int l = 0; l < L; ++l)
    for (int x = M; x < P; ++x) {
      if (Range(l, x).count == 0) continue;
      std::vector<NodeRoute>& rs = routes[l];
      if (rs.empty() || rs.back().node != node_of[x]) {
        for (const NodeRoute& r : rs)
          if (r.node == node_of[x])
            throw Error("dedup: node: expert rank " + std::to_string(placement.GlobalRank(group, x)) +
                        " is not next to the other expert ranks of its node (number nodes in rank order)");
        rs.push_back({node_of[x], {}, Range(l, x).first, 0});
      }
      NodeRoute& r = rs.back();
      if (Range(l, x).first != r.first_expert + r.experts)
        throw Error("dedup: node: the expert ranks of a node hold ranges that are not adjacent");
      r.owners.push_back(x);
      r.experts += Range(l, x).count;
    }
  for (auto& rs : routes)
    rs.erase(std::remove_if(rs.begin(), rs.end(), [](const NodeRoute& r) { return r.owners.size() < 2; }), rs.end());
  const size_t n = static_cast<size_t>(L) * R * P;
  node_dedups.assign(n, {});
  node_outbox.assign(n, {});
  node_grad_sums.assign(n, {});
  node_grads_in.clear();
  node_grads_in.resize(n);
  relays.clear();
  relays.resize(n);
}

const DistributedBackend::Impl::NodeRoute* DistributedBackend::Impl::RouteOf(int l, int a, int o) const {
  if (routes.empty()) return nullptr;
  for (const NodeRoute& r : routes[l])
    if (r.node != node_of[a] && std::find(r.owners.begin(), r.owners.end(), o) != r.owners.end()) return &r;
  return nullptr;
}

double DistributedBackend::Impl::LinkSeconds(size_t bytes, int peer) const {
  const int me = placement.LocalOf(rank);
  const bool same_node = node_of.empty() ? false : node_of[peer] == node_of[me];
  const double bw = same_node ? emulation.intra_node_bytes_per_second : emulation.inter_node_bytes_per_second;
  return (bw > 0 ? static_cast<double>(bytes) / bw : 0.0) + (bw > 0 ? emulation.link_latency_seconds : 0.0);
}

// --- attention side ---

void DistributedBackend::Impl::SendNodeBlocks(int l, int j) {
  if (routes.empty()) return;
  model::MicroBatchStages& mb = Micro(j);
  const ops::DispatchPlan& plan = mb.plan(l);
  const int me = placement.LocalOf(rank);
  for (size_t i = 0; i < routes[l].size(); ++i) {
    const NodeRoute& route = routes[l][i];
    if (route.node == node_of[me]) continue;
    const int64_t row0 = plan.offsets[route.first_expert];
    const int64_t rows = plan.offsets[route.first_expert + route.experts] - row0;
    Dedup& dd = node_dedups[Idx(l, j, static_cast<int>(i))];
    unique_of.resize(plan.tokens, -1);
    wire::MakeDedup(plan.token_of_row, row0, rows, unique_of, &dd);
    rows_sent[l] += static_cast<double>(dd.uniques());
    rows_inter_node[l] += static_cast<double>(dd.uniques());
    std::vector<char>& box = node_outbox[Idx(l, j, static_cast<int>(i))];
    wire::PackDispatch(plan.counts.data() + route.first_expert, route.experts, mb.dispatched(l).data() + row0 * d,
                       rows, d, &dd, &box);
    Send(dispatch.get(), box.data(), box.size(), route.owners[0], Tag(kNodeRows, l, j));
  }
}

void DistributedBackend::Impl::PostNodeGradReceives(int l, int j) {
  if (routes.empty()) return;
  const int me = placement.LocalOf(rank);
  for (size_t i = 0; i < routes[l].size(); ++i) {
    const NodeRoute& route = routes[l][i];
    const Dedup& dd = node_dedups[Idx(l, j, static_cast<int>(i))];
    if (route.node == node_of[me] || dd.index.empty()) continue;
    std::vector<float>& sums = node_grad_sums[Idx(l, j, static_cast<int>(i))];
    sums.resize(dd.uniques() * d);
    node_grads_in[Idx(l, j, static_cast<int>(i))] =
        combine->Irecv(sums.data(), sums.size() * sizeof(float), route.owners[0], Tag(kNodeGrads, l, j));
  }
}

void DistributedBackend::Impl::ScatterNodeGradSums(int l, int j) {
  if (routes.empty()) return;
  WaitFromOwners(node_grads_in, l, j, "combine-grad");
  model::MicroBatchStages& mb = Micro(j);
  const ops::DispatchPlan& plan = mb.plan(l);
  const int me = placement.LocalOf(rank);
  for (size_t i = 0; i < routes[l].size(); ++i) {
    const NodeRoute& route = routes[l][i];
    const Dedup& dd = node_dedups[Idx(l, j, static_cast<int>(i))];
    if (route.node == node_of[me] || dd.index.empty()) continue;
    wire::ScatterSums(dd, node_grad_sums[Idx(l, j, static_cast<int>(i))].data(), d,
                      mb.dispatched_grads(l).data() + plan.offsets[route.first_expert] * d);
  }
}

// --- the relay (a route's first owner) ---

void DistributedBackend::Impl::RelayRows(int l, int j, int a) {
  const int me = placement.LocalOf(rank);
  const NodeRoute& route = *RouteOf(l, a, me);
  Relay& rl = relays[Idx(l, j, a)];
  Wait(rl.request.get(), true, "dispatch", l, j);
  rl.request.reset();
  const int64_t max_rows = micro_tokens * std::min<int64_t>(k, route.experts);
  std::vector<int64_t> experts;
  for (int o : route.owners) experts.push_back(Range(l, o).count);
  try {
    const wire::DispatchBlock block =
        wire::UnpackDispatch(rl.inbox.data(), rl.inbox.size(), route.experts, max_rows, d, true);
    rl.uniques = block.uniques;
    rl.rows = block.rows;
    wire::SplitNodeBlock(block, d, experts, &rl.split);
  } catch (const Error& e) {
    throw Error("rank " + std::to_string(rank) + ": node block from rank " +
                std::to_string(placement.GlobalRank(group, a)) + ": " + e.what());
  }
  for (size_t i = 0; i < route.owners.size(); ++i) {
    const int o = route.owners[i];
    wire::NodeSplit& part = rl.split[i];
    if (o == me) {
      slots[Idx(l, j, a)].inbox = part.box;
      continue;
    }
    rows_relayed[l] += static_cast<double>(part.node_token.size());
    Send(dispatch.get(), part.box.data(), part.box.size(), o, Tag(kRelayRows + a, l, j));
  }
}

void DistributedBackend::Impl::RelaySums(int l, int j) {
  if (routes.empty()) return;
  const int me = placement.LocalOf(rank);
  for (int a = 0; a < M; ++a) {
    const NodeRoute* route = RouteOf(l, a, me);
    if (!route || route->owners[0] != me) continue;
    Relay& rl = relays[Idx(l, j, a)];
    if (rl.rows == 0) continue;
    rl.peer_sums.resize(route->owners.size());
    std::vector<std::unique_ptr<comm::Request>> in(route->owners.size());
    for (size_t i = 1; i < route->owners.size(); ++i) {
      if (rl.split[i].rows == 0) continue;
      rl.peer_sums[i].resize(rl.split[i].node_token.size() * d);
      in[i] = combine->Irecv(rl.peer_sums[i].data(), rl.peer_sums[i].size() * sizeof(float), route->owners[i],
                             Tag(kRelayRows + M + a, l, j));
    }
    rl.sums.assign(rl.uniques * d, 0.0f);
    for (size_t i = 0; i < route->owners.size(); ++i) {
      if (rl.split[i].rows == 0) continue;
      if (i == 0) {
        wire::AddToNodeSums(rl.split[0], slots[Idx(l, j, a)].dx_sums.data(), d, rl.sums.data());
        continue;
      }
      Wait(in[i].get(), false, "relay-grad", l, j);
      wire::AddToNodeSums(rl.split[i], rl.peer_sums[i].data(), d, rl.sums.data());
    }
    Send(combine.get(), rl.sums.data(), rl.sums.size() * sizeof(float), a, Tag(kNodeGrads, l, j));
  }
}

}  // namespace hetermoe::parallel
