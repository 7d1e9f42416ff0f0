// HierMoE's node level of token deduplication (engine.h, SetDedup kNode and
// kAuto), over Gloo and over NCCL, and the depth choice's link fit. With
// kSwitch the same runs one level down: routes run inside the switches
// (relay_group_of) instead of the nodes; "node" below means that group.
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
//
// With kAuto each attention rank chooses the depth of each of its blocks
// (l, j) from that block's routing and the fitted links (ChooseNodeLevel).
// Its message to every route owner, on the rows' own tag, starts with a
// word (wire::RouteBlock) saying what follows: the owner's own block (rank
// level), the node's block (node level, to the first owner), or nothing
// (node level, to the others, who then take their block from the relay).
// So the owners post the same receives whatever the choice, and a layer
// can mix depths within a step.
#include "trainer/parallel/engine_impl.h"

#include <cstdio>
#include <thread>

#include "common/error.h"

namespace hetermoe::parallel {

std::string DistributedBackend::SetDedup(DedupDepth depth, const std::vector<int>& node_of_rank,
                                         const std::optional<planner::MeasuredLinks>& links,
                                         const std::vector<int>& switch_of_rank) {
  Impl& m = *impl_;
  if (!node_of_rank.empty() && static_cast<int>(node_of_rank.size()) != m.placement.world_size())
    throw Error("dedup: " + std::to_string(node_of_rank.size()) + " nodes given for " +
                std::to_string(m.placement.world_size()) + " ranks");
  m.depth = depth;
  m.dedup = depth != DedupDepth::kOff;
  if (depth == DedupDepth::kSwitch && static_cast<int>(switch_of_rank.size()) != m.placement.world_size())
    throw Error("dedup switch: the ranks' switches are not given (parallel.ranks_per_switch, or "
                "HETERMOE_SWITCH_NAME on every rank)");
  m.node_of.assign(m.P, 0);
  m.relay_group_of.assign(m.P, 0);
  for (int x = 0; x < m.P; ++x) {
    const int global = m.placement.GlobalRank(m.group, x);
    m.node_of[x] = node_of_rank.empty() ? x : node_of_rank[global];
    m.relay_group_of[x] = depth == DedupDepth::kSwitch ? switch_of_rank[global] : m.node_of[x];
  }
  m.MakeRoutes();
  // kAuto: each attention rank chooses for each of its blocks (ChooseNodeLevel).
  m.via_node.assign(m.routes.empty() ? 0 : static_cast<size_t>(m.L) * m.R * m.P, depth != DedupDepth::kAuto ? 1 : 0);
  if (depth != DedupDepth::kAuto) return std::string();
  if (!links) return m.MeasureLinks();
  m.links_given = true;
  m.inter_link = links->inter_node;
  m.intra_link = links->intra_node;
  m.links_over = links->measured_over;
  return "dedup auto: links given (measured over " + (links->measured_over.empty() ? "?" : links->measured_over) +
         "); each block's depth from its routing";
}

std::optional<planner::MeasuredLinks> DistributedBackend::Links() const {
  const Impl& m = *impl_;
  if (m.depth != DedupDepth::kAuto || m.links_over.empty()) return std::nullopt;
  return planner::MeasuredLinks{m.inter_link, m.intra_link, m.links_over};
}

void DistributedBackend::Impl::MakeRoutes() {
  routes.clear();  // empty: no layer has a route
  if (depth != DedupDepth::kNode && depth != DedupDepth::kAuto && depth != DedupDepth::kSwitch) return;
  routes = MakeNodeRoutes(placement, relay_group_of);
  const size_t n = static_cast<size_t>(L) * R * P;
  node_dedups.assign(n, {});
  node_outbox.assign(n, {});
  node_grad_sums.assign(n, {});
  node_grads_in.clear();
  node_grads_in.resize(n);
  relays.clear();
  relays.resize(n);
}

bool DistributedBackend::Impl::ReachesRoute(int l, int a) const {
  if (routes.empty()) return false;
  for (const NodeRoute& r : routes[l])
    if (r.node != relay_group_of[a]) return true;
  return false;
}

const NodeRoute* DistributedBackend::Impl::RouteFor(int l, int a, int o) const {
  if (routes.empty()) return nullptr;
  for (const NodeRoute& r : routes[l])
    if (r.node != relay_group_of[a] && std::find(r.owners.begin(), r.owners.end(), o) != r.owners.end()) return &r;
  return nullptr;
}

double DistributedBackend::Impl::LinkSeconds(size_t bytes, int peer) const {
  const bool same_node = node_of[peer] == node_of[placement.LocalOf(rank)];
  const double bw = same_node ? emulation.intra_node_bytes_per_second : emulation.inter_node_bytes_per_second;
  return bw > 0 ? static_cast<double>(bytes) / bw + emulation.link_latency_seconds : 0.0;
}

// --- attention side ---

void DistributedBackend::Impl::SendNodeBlocks(int l, int j, std::vector<model::RowExchange::Send>* sends) {
  const int me = placement.LocalOf(rank);
  if (!ViaNode(l, j, me)) return;
  model::MicroBatchStages& mb = Micro(j);
  const ops::DispatchPlan& plan = mb.plan(l);
  // kAuto: on the dispatch tag, after a word saying a node block follows.
  const bool word = depth == DedupDepth::kAuto;
  const size_t prefix = word ? wire::kRouteWordBytes : 0;
  const uint32_t tag = Tag(word ? kRows : kNodeRows, l, j);
  for (size_t i = 0; i < routes[l].size(); ++i) {
    const NodeRoute& route = routes[l][i];
    if (route.node == relay_group_of[me]) continue;
    const int64_t row0 = plan.offsets[route.first_expert];
    const int64_t rows = plan.offsets[route.first_expert + route.experts] - row0;
    Dedup& dd = node_dedups[Idx(l, j, static_cast<int>(i))];
    if (!word) {  // kAuto: made when the depth was chosen (ChooseNodeLevel)
      unique_of.resize(plan.tokens, -1);
      wire::MakeDedup(plan.token_of_row, row0, rows, unique_of, &dd);
    }
    rows_sent[l] += static_cast<double>(dd.uniques());
    if (node_of[route.owners[0]] != node_of[me]) rows_inter_node[l] += static_cast<double>(dd.uniques());
    std::vector<char>& box = node_outbox[Idx(l, j, static_cast<int>(i))];
    if (sends) {  // NCCL: the header over Gloo, the node's unique rows in the kRows group
      wire::PackDispatch(plan.counts.data() + route.first_expert, route.experts, nullptr, rows, 0, &dd, &box, prefix);
      if (word) wire::WriteRouteWord(wire::RouteBlock::kNode, &box);
      Send(dispatch.get(), box.data(), box.size(), route.owners[0], tag);
      if (rows == 0) continue;
      model::RowExchange::Send s;
      s.peer = route.owners[0];
      s.rows = mb.device_rows(l).xp + row0 * d;
      s.count = dd.uniques();
      s.pick.assign(dd.first.begin(), dd.first.end());
      sends->push_back(std::move(s));
      continue;
    }
    wire::PackDispatch(plan.counts.data() + route.first_expert, route.experts, mb.dispatched(l).data() + row0 * d,
                       rows, d, &dd, &box, prefix);
    if (word) wire::WriteRouteWord(wire::RouteBlock::kNode, &box);
    Send(dispatch.get(), box.data(), box.size(), route.owners[0], tag);
  }
}

void DistributedBackend::Impl::PostNodeGradReceives(int l, int j) {
  const int me = placement.LocalOf(rank);
  if (!ViaNode(l, j, me)) return;
  for (size_t i = 0; i < routes[l].size(); ++i) {
    const NodeRoute& route = routes[l][i];
    const Dedup& dd = node_dedups[Idx(l, j, static_cast<int>(i))];
    if (route.node == relay_group_of[me] || dd.index.empty()) continue;
    std::vector<float>& sums = node_grad_sums[Idx(l, j, static_cast<int>(i))];
    sums.resize(dd.uniques() * d);
    node_grads_in[Idx(l, j, static_cast<int>(i))] =
        combine->Irecv(sums.data(), sums.size() * sizeof(float), route.owners[0], Tag(kNodeGrads, l, j));
  }
}

void DistributedBackend::Impl::ScatterNodeGradSums(int l, int j) {
  const int me = placement.LocalOf(rank);
  if (!ViaNode(l, j, me)) return;
  WaitFromOwners(node_grads_in, l, j, "combine-grad");
  model::MicroBatchStages& mb = Micro(j);
  const ops::DispatchPlan& plan = mb.plan(l);
  for (size_t i = 0; i < routes[l].size(); ++i) {
    const NodeRoute& route = routes[l][i];
    const Dedup& dd = node_dedups[Idx(l, j, static_cast<int>(i))];
    if (route.node == relay_group_of[me] || dd.index.empty()) continue;
    wire::ScatterSums(dd, node_grad_sums[Idx(l, j, static_cast<int>(i))].data(), d,
                      mb.dispatched_grads(l).data() + plan.offsets[route.first_expert] * d);
  }
}

// --- the depth choice (kAuto) ---

// What either depth would send this rank's rows of (l, j) over the routes
// of the layer, priced with the fitted links. The dedups it makes are the
// ones the send uses (node_dedups per route, dedups per route owner), so
// SendNodeBlocks and PostDispatch do not make them again. With the depth chosen per
// block, node level sends each route's other owners a word across nodes
// too (wire::RouteBlock), so both depths send as many messages across
// nodes; node level sends fewer rows across, and relays rows inside.
bool DistributedBackend::Impl::ChooseNodeLevel(int l, int j) {
  const ops::DispatchPlan& plan = Micro(j).plan(l);
  const int me = placement.LocalOf(rank);
  planner::RouteTraffic t;
  unique_of.resize(plan.tokens, -1);
  bool routed_here = false;
  for (size_t ri = 0; ri < routes[l].size(); ++ri) {
    const NodeRoute& route = routes[l][ri];
    if (route.node == relay_group_of[me]) continue;
    routed_here = true;
    const int64_t row0 = plan.offsets[route.first_expert];
    Dedup& node_dd = node_dedups[Idx(l, j, static_cast<int>(ri))];
    wire::MakeDedup(plan.token_of_row, row0, plan.offsets[route.first_expert + route.experts] - row0, unique_of,
                    &node_dd);
    t.node_rows += static_cast<double>(node_dd.uniques());
    t.node_messages += static_cast<double>(route.owners.size());
    for (size_t i = 0; i < route.owners.size(); ++i) {
      const ExpertRange& r = Range(l, route.owners[i]);
      const int64_t o0 = plan.offsets[r.first];
      Dedup& dd = dedups[Idx(l, j, route.owners[i])];
      wire::MakeDedup(plan.token_of_row, o0, plan.offsets[r.first + r.count] - o0, unique_of, &dd);
      t.rank_rows += static_cast<double>(dd.uniques());
      t.rank_messages += 1;
      if (i == 0) continue;
      t.relayed_rows += static_cast<double>(dd.uniques());
      t.relayed_messages += 1;
    }
  }
  if (!routed_here) return false;
  const double row_bytes = static_cast<double>(d) * (exchange ? exchange->wire_value_bytes() : sizeof(float));
  return planner::PredictDepth(t, inter_link, intra_link, row_bytes).node;
}

// Group 0 times transfers of a few sizes over two links, each a message and
// a one-byte reply: its attention rank 0 to the first relay on another node
// (across nodes), and that relay to its route's next owner (inside a node).
// Only the measuring ranks add their fits to the sum, so every rank gets the
// same numbers.
std::string DistributedBackend::Impl::MeasureLinks() {
  const NodeRoute* probe = nullptr;
  for (int l = 0; l < L && !probe && !routes.empty(); ++l)
    for (const NodeRoute& r : routes[l])
      if (r.node != node_of[0]) {
        probe = &r;
        break;
      }
  std::vector<double> fits(4, 0.0);
  const int me = placement.LocalOf(rank);
  const std::vector<double> sizes = {2048, 16384, 131072, 524288};
  constexpr int kReps = 7;  // the fastest of these per size: the link, not the host's other work
  std::vector<char> buffer(static_cast<size_t>(sizes.back())), ack(1);
  uint32_t kind = kRelayRows + 2 * static_cast<uint32_t>(M);  // past the relay tags
  // With the NCCL transport the rows move device to device: time that, in
  // whole rows of the wire format, from a scratch block's device rows.
  const int64_t row_bytes = exchange ? d * static_cast<int64_t>(exchange->wire_value_bytes()) : 1;
  std::unique_ptr<model::ExpertBlock> scratch;
  model::DeviceRows dev;
  if (exchange && probe) {
    scratch = device->NewExpertBlock();
    dev = scratch->RowsOnDevice(std::max<int64_t>(1, static_cast<int64_t>(sizes.back()) / row_bytes));
  }
  // One message of `rows` from `from` to `to`, and a one-row reply.
  auto device_transfer = [&](int from, int to, int64_t rows) {
    model::RowExchange::Send s;
    s.peer = to;
    s.rows = dev.xp;
    s.count = rows;
    model::RowExchange::Recv r;
    r.peer = from;
    r.count = r.n = rows;
    r.rows = dev.xp;
    const bool sender = me == from;
    exchange->Wait(sender ? exchange->Post(Channel::kRows, {s}, {}) : exchange->Post(Channel::kRows, {}, {r}));
    model::RowExchange::Send back;
    back.peer = from;
    back.rows = dev.xp;  // the scratch holds rows only; the reply reuses its first row
    back.count = 1;
    model::RowExchange::Recv reply;
    reply.peer = to;
    reply.count = reply.n = 1;
    reply.rows = dev.xp;
    exchange->Wait(sender ? exchange->Post(Channel::kOutputs, {}, {reply}) : exchange->Post(Channel::kOutputs, {back}, {}));
  };
  // The same over Gloo through the host (Send: the emulated links too).
  auto host_transfer = [&](int from, int to, size_t bytes, uint32_t tag) {
    if (me == from) {
      Send(dispatch.get(), buffer.data(), bytes, to, tag);
      sends.back()->Wait();
      sends.pop_back();
      combine->Irecv(ack.data(), 1, to, tag)->Wait();
    } else {
      dispatch->Irecv(buffer.data(), bytes, from, tag)->Wait();
      combine->Isend(ack.data(), 1, from, tag)->Wait();
    }
  };
  // The two links' transfers interleaved, rep by rep, so that a burst of
  // load on the host slows both alike rather than one link's fit.
  struct Link {
    int from, to;
    std::vector<double> bytes, seconds;  // per size: the fastest transfer
  };
  std::vector<Link> links;
  if (probe) links = {{0, probe->owners[0], {}, {}}, {probe->owners[0], probe->owners[1], {}, {}}};
  for (int rep = 0; rep <= kReps; ++rep)  // rep 0 warms the connections up
    for (Link& link : links)
      for (size_t at = 0; at < sizes.size(); ++at) {
        const int64_t rows = std::max<int64_t>(1, static_cast<int64_t>(sizes[at]) / row_bytes);
        const double size = static_cast<double>(rows * row_bytes);
        const uint32_t tag = Tag(kind++, 0, 0);
        if (me != link.from && me != link.to) continue;
        const auto t0 = Clock::now();
        if (exchange) device_transfer(link.from, link.to, rows);
        else host_transfer(link.from, link.to, static_cast<size_t>(size), tag);
        const double took = Seconds(t0, Clock::now());
        if (me != link.from || rep == 0) continue;
        if (rep == 1) {
          link.bytes.push_back(size);
          link.seconds.push_back(took);
        } else {
          link.seconds[at] = std::min(link.seconds[at], took);
        }
      }
  for (size_t i = 0; i < links.size(); ++i)
    if (me == links[i].from && group == 0) {
      const planner::LinkCost c = planner::FitLinkCost(links[i].bytes, links[i].seconds);
      fits[2 * i] = c.alpha;
      fits[2 * i + 1] = c.beta;
    }
  everyone->AllReduceSum(fits.data(), fits.size());
  // The per-message time a round trip measures is mostly the host's, the
  // same on both links, and its noise under load (0.1 ms) would decide
  // between depths that send as many messages: one alpha for both, so the
  // bandwidths decide.
  const double alpha = std::min(fits[0], fits[2]);
  inter_link = {probe ? alpha : 0.0, fits[1]};
  intra_link = {probe ? alpha : 0.0, fits[3]};
  links_over = !probe ? "" : exchange ? "nccl" : "gloo";
  if (!probe) return "dedup auto: no node holds two expert ranks of a layer apart from the attention ranks; rank level";
  char line[256];
  auto gbps = [](double beta) { return beta > 0 ? 8e-9 / beta : 0.0; };
  std::snprintf(line, sizeof line,
                "dedup auto: links fitted at start-up (%s): across nodes %.1f us + %.2f Gbit/s, inside a node %.1f us + "
                "%.2f Gbit/s; each block's depth from its routing",
                exchange ? "NCCL, device to device" : "Gloo", inter_link.alpha * 1e6, gbps(inter_link.beta),
                intra_link.alpha * 1e6, gbps(intra_link.beta));
  return line;
}

// --- the relay over NCCL ---

float* DistributedBackend::Impl::RelayScratch(std::vector<std::unique_ptr<model::ExpertBlock>>& blocks, int a,
                                              int64_t rows) {
  if (blocks.empty()) blocks.resize(M);
  if (!blocks[a]) blocks[a] = device->NewExpertBlock();
  return blocks[a]->RowsOnDevice(std::max<int64_t>(rows, 1)).xp;
}

// One group per attention rank (a group holds at most one device copy to
// this rank itself), waited for at once: every owner of the route posts them
// in the same order, in its ExpFwd(l, j) and ExpBwd(l, j).
void DistributedBackend::Impl::PostRelayRows(int l, int j) {
  if (routes.empty()) return;
  const int me = placement.LocalOf(rank);
  for (int a = 0; a < M; ++a) {
    const NodeRoute* route = RouteOf(l, j, a, me);
    if (!route) continue;
    std::vector<model::RowExchange::Send> sends;
    Recvs recvs;
    OwnerSlot& mine = slots[Idx(l, j, a)];
    auto receive = [&](int from) {
      if (mine.rows == 0) return;
      model::RowExchange::Recv r;
      r.peer = from;
      r.count = mine.uniques;
      r.rows = mine.dev.xp;
      r.n = mine.rows;
      r.index = mine.index;
      recvs.push_back(std::move(r));
    };
    if (route->owners[0] == me) {
      const Relay& rl = relays[Idx(l, j, a)];
      for (size_t i = 0; i < route->owners.size(); ++i) {
        const wire::NodeSplit& part = rl.split[i];
        if (part.rows == 0) continue;
        model::RowExchange::Send s;
        s.peer = route->owners[i];
        s.rows = RelayScratch(relay_rows, a, rl.uniques);  // filled by the kRows group
        s.count = static_cast<int64_t>(part.node_token.size());
        s.pick = part.node_token;
        sends.push_back(std::move(s));
      }
    }
    receive(route->owners[0]);  // the first owner's own rows: a device copy in the same group
    if (sends.empty() && recvs.empty()) continue;
    PostGroup(Channel::kRelayRows, l, j, std::move(sends), std::move(recvs));
    WaitGroup(Channel::kRelayRows, l, j, "relay");
  }
}

void DistributedBackend::Impl::PostRelaySums(int l, int j, std::vector<model::RowExchange::Send>* replies) {
  if (routes.empty()) return;
  const int me = placement.LocalOf(rank);
  for (int a = 0; a < M; ++a) {
    const NodeRoute* route = RouteOf(l, j, a, me);
    if (!route) continue;
    std::vector<model::RowExchange::Send> sends;
    Recvs recvs;
    OwnerSlot& mine = slots[Idx(l, j, a)];
    if (mine.rows > 0) {  // this owner's sums per unique token, to the first owner (itself included)
      model::RowExchange::Send s;
      s.peer = route->owners[0];
      s.rows = mine.dev.dxp;
      s.count = mine.uniques;
      wire::RowsByUnique(mine.index, mine.uniques, &s.sum_start, &s.sum_rows);
      sends.push_back(std::move(s));
    }
    const bool first_owner = route->owners[0] == me;
    const Relay& rl = relays[Idx(l, j, a)];
    if (first_owner)
      for (size_t i = 0; i < route->owners.size(); ++i) {
        const wire::NodeSplit& part = rl.split[i];
        if (part.rows == 0) continue;
        model::RowExchange::Recv r;
        r.peer = route->owners[i];
        r.count = r.n = static_cast<int64_t>(part.node_token.size());
        r.rows = RelayScratch(relay_sums, a, rl.all_sums) + rl.sums_at[i] * d;
        recvs.push_back(std::move(r));
      }
    if (sends.empty() && recvs.empty()) continue;
    PostGroup(Channel::kRelaySums, l, j, std::move(sends), std::move(recvs));
    WaitGroup(Channel::kRelaySums, l, j, "relay-grad");
    if (!first_owner || rl.rows == 0) continue;
    // One row per node token to the attention rank, the owners' sums added in owner order.
    std::vector<int32_t> index;  // the sums' row -> node token
    for (const wire::NodeSplit& part : rl.split) index.insert(index.end(), part.node_token.begin(), part.node_token.end());
    model::RowExchange::Send s;
    s.peer = a;
    s.rows = RelayScratch(relay_sums, a, rl.all_sums);
    s.count = rl.uniques;
    wire::RowsByUnique(index, rl.uniques, &s.sum_start, &s.sum_rows);
    replies->push_back(std::move(s));
  }
}

// --- the relay (a route's first owner) ---

void DistributedBackend::Impl::RelayRows(int l, int j, int a) {
  const int me = placement.LocalOf(rank);
  const NodeRoute& route = *RouteOf(l, j, a, me);
  Relay& rl = relays[Idx(l, j, a)];
  if (rl.request) {  // kNode: on its own tag (kAuto: read with the word, ReadHeader)
    Wait(rl.request.get(), true, "dispatch", l, j);
    rl.request.reset();
  }
  const int64_t max_rows = micro_tokens * std::min<int64_t>(k, route.experts);
  std::vector<int64_t> experts;
  for (int o : route.owners) experts.push_back(Range(l, o).count);
  const int64_t on_wire = exchange ? 0 : d;  // NCCL: the rows come in the kRows group
  try {
    const wire::DispatchBlock block =
        wire::UnpackDispatch(rl.inbox.data() + rl.at, rl.inbox.size() - rl.at, route.experts, max_rows, on_wire, true);
    rl.uniques = block.uniques;
    rl.rows = block.rows;
    wire::SplitNodeBlock(block, on_wire, experts, &rl.split);
  } catch (const Error& e) {
    throw Error("rank " + std::to_string(rank) + ": node block from rank " +
                std::to_string(placement.GlobalRank(group, a)) + ": " + e.what());
  }
  if (exchange) {  // where the owners' sums will sit, one after the other, in backward
    rl.sums_at.clear();
    rl.all_sums = 0;
    for (const wire::NodeSplit& part : rl.split) {
      rl.sums_at.push_back(rl.all_sums);
      rl.all_sums += static_cast<int64_t>(part.node_token.size());
    }
  }
  for (size_t i = 0; i < route.owners.size(); ++i) {
    const int o = route.owners[i];
    wire::NodeSplit& part = rl.split[i];
    if (o == me) {
      slots[Idx(l, j, a)].inbox = part.box;
      continue;
    }
    rows_relayed[l] += static_cast<double>(part.node_token.size());
    Send(dispatch.get(), part.box.data(), part.box.size(), o, Tag(RelayRowsKind(a), l, j));
  }
}

void DistributedBackend::Impl::RelaySums(int l, int j) {
  if (routes.empty()) return;
  const int me = placement.LocalOf(rank);
  for (int a = 0; a < M; ++a) {
    const NodeRoute* route = RouteOf(l, j, a, me);
    if (!route || route->owners[0] != me) continue;
    Relay& rl = relays[Idx(l, j, a)];
    if (rl.rows == 0) continue;
    rl.peer_sums.resize(route->owners.size());
    std::vector<std::unique_ptr<comm::Request>> in(route->owners.size());
    for (size_t i = 1; i < route->owners.size(); ++i) {
      if (rl.split[i].rows == 0) continue;
      rl.peer_sums[i].resize(rl.split[i].node_token.size() * d);
      in[i] = combine->Irecv(rl.peer_sums[i].data(), rl.peer_sums[i].size() * sizeof(float), route->owners[i],
                             Tag(RelaySumsKind(a), l, j));
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
