// Pricing of one ZP group shape (see zp_group.h).
#include "planner/zp_group.h"

#include <algorithm>
#include <bit>
#include <cmath>

#include "common/error.h"
#include "planner/dedup.h"
#include "planner/dedup_depth.h"

namespace hetermoe::planner {
namespace {

PassSeconds Scaled(const PassSeconds& p, double x) { return {p.forward * x, p.backward * x}; }

int ExpertsOnBusiestRank(int experts, int ranks) { return (experts + ranks - 1) / ranks; }

// Asym-EA's chunk: every attention rank takes n1, every expert rank gives n2.
struct AsymChunks {
  bool ok = false;
  int n1 = 0, n2 = 0;
};

AsymChunks AsymChunksOf(const GroupShape& shape, bool allowed) {
  AsymChunks c;
  c.ok = allowed && AsymEaShapeOk(shape.attention_ranks, shape.expert_ranks);
  if (c.ok) {
    c.n1 = std::max(1, shape.expert_ranks / shape.attention_ranks);
    c.n2 = c.n1 * shape.attention_ranks / shape.expert_ranks;
  }
  return c;
}

int OffloadedAt(const GroupShape& shape, int layer) {
  return shape.offloaded.empty() ? 0 : shape.offloaded[static_cast<size_t>(layer)];
}

}  // namespace

PlanningContext::PlanningContext(const ModelShape& model, const Inventory& inventory,
                                 const GpuProfileTable& profiles, int64_t seq_len, Precision precision,
                                 int micro_batches_in_flight, bool zero, const std::string& recompute,
                                 bool dedup, const std::string& dedup_depth,
                                 const std::optional<MeasuredLinks>& measured_links,
                                 const std::vector<std::vector<int64_t>>& routing, bool swap)
    : model_(model),
      inventory_(inventory),
      seq_len_(seq_len),
      precision_(precision),
      micro_batches_in_flight_(micro_batches_in_flight),
      zero_(zero),
      recompute_(recompute),
      dedup_(dedup),
      dedup_depth_(dedup_depth),
      measured_links_(measured_links),
      routing_(routing),
      swap_(swap) {
  if (!routing_.empty() && (static_cast<int64_t>(routing_.size()) != model_.layers ||
                            std::any_of(routing_.begin(), routing_.end(), [&](const std::vector<int64_t>& layer) {
                              return static_cast<int64_t>(layer.size()) != model_.experts;
                            })))
    throw Error("routing: " + std::to_string(routing_.size()) + " layers of expert counts given for a model of " +
                std::to_string(model_.layers) + " layers of " + std::to_string(model_.experts) + " experts");
  if (dedup_depth_ != "rank" && dedup_depth_ != "node" && dedup_depth_ != "auto")
    throw Error("dedup depth '" + dedup_depth_ + "' is not rank, node or auto");
  for (const std::string& kind : inventory_.Kinds()) {
    KindContext& k = kinds_[kind];
    k.gpu = profiles.Find(kind);
    if (const MeasuredProfile* m = FindMeasured(profiles, kind, model_, seq_len)) k.measured = *m;
    k.cost = std::make_unique<ComputeCostModel>(model_, k.gpu, precision, seq_len,
                                                k.measured ? &*k.measured : nullptr);
    k.count = inventory_.Count(kind);
    k.max_per_node = inventory_.MaxGpusPerNode(kind);
    k.nic_gbps = inventory_.SlowestNicGbps(kind);
  }
  for (const InventoryNode& node : inventory_.nodes) hosts_[node.Host()][node.gpu] += node.count;

  const std::vector<std::string> kinds = inventory_.Kinds();
  role_kinds_ = kinds;
  for (const std::string& kind : kinds) kinds_[kind].members = {kind};
  if (kinds.size() < 2 || kinds.size() > static_cast<size_t>(kMaxPooledKinds)) return;
  for (unsigned mask = 1; mask < (1u << kinds.size()); ++mask) {
    if (std::popcount(mask) < 2) continue;
    std::vector<std::string> members;
    for (size_t i = 0; i < kinds.size(); ++i) {
      if (mask & (1u << i)) members.push_back(kinds[i]);
    }
    std::string name;
    for (const std::string& m : members) name += (name.empty() ? "" : "+") + m;
    KindContext& pool = kinds_[name];
    pool.members = members;
    pool.gpu.kind = name;
    pool.gpu.source = "pool of " + name;
    std::vector<const ComputeCostModel*> costs;
    for (const std::string& m : members) {
      const KindContext& k = kinds_.at(m);
      const bool first = costs.empty();
      pool.gpu.memory_gib = first ? k.gpu.memory_gib : std::min(pool.gpu.memory_gib, k.gpu.memory_gib);
      pool.gpu.intra_node_gbs = first ? k.gpu.intra_node_gbs : std::min(pool.gpu.intra_node_gbs, k.gpu.intra_node_gbs);
      pool.nic_gbps = first ? k.nic_gbps : std::min(pool.nic_gbps, k.nic_gbps);
      pool.count += k.count;
      pool.max_per_node = std::max(pool.max_per_node, k.max_per_node);
      costs.push_back(k.cost.get());
    }
    pool.cost = std::make_unique<ComputeCostModel>(pool.gpu, std::move(costs));
    for (auto& [host, counts] : hosts_) {
      int here = 0;
      for (const std::string& m : members) {
        const auto it = counts.find(m);
        here += it == counts.end() ? 0 : it->second;
      }
      if (here > 0) counts[name] = here;
    }
    role_kinds_.push_back(name);
  }
}

std::vector<std::string> PlanningContext::RoleKinds() const { return role_kinds_; }

const KindContext& PlanningContext::Kind(const std::string& kind) const {
  const auto it = kinds_.find(kind);
  if (it == kinds_.end()) throw Error("planner: GPU kind '" + kind + "' is not in the inventory");
  return it->second;
}

std::vector<std::string> PlanningContext::Kinds() const { return inventory_.Kinds(); }

const RoutingLoad* PlanningContext::Load(int expert_ranks) const {
  if (routing_.empty() || expert_ranks > model_.experts) return nullptr;
  const std::lock_guard<std::mutex> lock(loads_mutex_);
  auto it = loads_.find(expert_ranks);
  if (it == loads_.end())
    it = loads_.emplace(expert_ranks, LoadOfRouting(routing_, model_.top_k, expert_ranks, swap_)).first;
  return &it->second;
}

LinkModel PlanningContext::Link(const std::string& kind, bool remote, int nic_sharing) const {
  const KindContext& k = Kind(kind);
  if (measured_links_) {  // one flow measured: a NIC shared by `sharing` GPUs gives each its share
    const LinkCost& c = remote ? measured_links_->inter_node : measured_links_->intra_node;
    const int sharing = !remote ? 1 : nic_sharing > 0 ? std::min(nic_sharing, k.max_per_node) : k.max_per_node;
    return {c.alpha, 1.0 / (c.beta * std::max(1, sharing))};
  }
  if (k.members.size() > 1) {
    // A pool's ranks wait for the slowest member's link.
    LinkModel slowest;
    for (const std::string& m : k.members) {
      const LinkModel link = Link(m, remote, nic_sharing);
      if (slowest.bytes_per_second == 0 || link.bytes_per_second < slowest.bytes_per_second) {
        slowest.bytes_per_second = link.bytes_per_second;
      }
      slowest.latency_seconds = std::max(slowest.latency_seconds, link.latency_seconds);
    }
    return slowest;
  }
  const int sharing = nic_sharing > 0 ? std::min(nic_sharing, k.max_per_node) : k.max_per_node;
  return remote ? InterNodeLink(k.gpu, k.nic_gbps, inventory_.latency_us, sharing)
                : IntraNodeLink(k.gpu, inventory_.latency_us);
}

int GroupsInsideMachines(const PlanningContext& ctx, const std::string& attention, const std::string& expert, int M,
                         int N) {
  int groups = 0;
  for (const auto& [host, counts] : ctx.Hosts()) {
    const auto a = counts.find(attention), e = counts.find(expert);
    if (a == counts.end() || e == counts.end()) continue;
    groups += attention == expert ? a->second / (M + N) : std::min(a->second / M, e->second / N);
  }
  return groups;
}

GroupLinks LinksOf(const PlanningContext& ctx, const GroupShape& shape) {
  const int M = shape.attention_ranks, N = shape.expert_ranks, g = std::max(1, shape.groups);
  GroupLinks links;
  links.remote = GroupsInsideMachines(ctx, shape.attention_gpu, shape.expert_gpu, M, N) < g;
  const int per_node_a = ctx.Kind(shape.attention_gpu).max_per_node;
  const int per_node_e = ctx.Kind(shape.expert_gpu).max_per_node;
  if (shape.SameKind()) {
    links.attention_nic_sharing = links.expert_nic_sharing = std::min(per_node_a, g * (M + N));
  } else {
    links.attention_nic_sharing = std::min(per_node_a, g * M);
    links.expert_nic_sharing = std::min(per_node_e, g * N);
  }
  return links;
}

double PlanningContext::AllReduceSeconds(const std::string& kind, double bytes, int participants) const {
  if (participants <= 1 || bytes <= 0) return 0;
  const LinkModel link = Link(kind, participants > Kind(kind).max_per_node);
  // Bandwidth term of a ring, latency term of a tree (NCCL picks per size).
  const double p = participants;
  return 2.0 * (p - 1) / p * bytes / link.bytes_per_second + 2.0 * std::ceil(std::log2(p)) * link.latency_seconds;
}

ZpMemory GroupMemory(const PlanningContext& ctx, const GroupShape& shape, Schedule schedule) {
  const KindContext& a = ctx.Kind(shape.attention_gpu);
  const KindContext& e = ctx.Kind(shape.expert_gpu);
  ZpMemoryInputs in;
  in.model = &ctx.model();
  in.seq_len = ctx.seq_len();
  in.sequences_per_attention_rank = shape.sequences_per_attention_rank;
  in.micro_batches = shape.micro_batches;
  const int waves = ctx.micro_batches_in_flight();
  in.micro_batches_in_flight =
      schedule != Schedule::kZebra ? 1 : waves > 0 ? std::min(waves, shape.micro_batches) : shape.micro_batches;
  in.optimizer_shards = ctx.zero() ? std::max(1, shape.groups) * shape.attention_ranks : 1;
  in.recompute_attention = ctx.recompute() == "attention" || ctx.recompute() == "full";
  in.recompute_experts = ctx.recompute() == "experts" || ctx.recompute() == "full";
  in.attention_ranks = shape.attention_ranks;
  in.expert_ranks = shape.expert_ranks;
  in.attention_gpu = &a.gpu;
  in.expert_gpu = &e.gpu;
  in.attention_measured = a.measured ? &*a.measured : nullptr;
  in.expert_measured = e.measured ? &*e.measured : nullptr;
  return ZpMemoryModel(in);
}

AsymEaInputs GroupAsymEaInputs(const PlanningContext& ctx, const GroupShape& shape, const ZpMemory& memory,
                               bool head_aware) {
  const ModelShape& m = ctx.model();
  const KindContext& a = ctx.Kind(shape.attention_gpu);
  const KindContext& e = ctx.Kind(shape.expert_gpu);
  const double b = static_cast<double>(shape.sequences_per_attention_rank) / shape.micro_batches;
  const double tokens_per_expert = shape.attention_ranks * b * static_cast<double>(ctx.seq_len() * m.top_k) /
                                   static_cast<double>(m.experts);
  AsymEaInputs in;
  in.layers = static_cast<int>(m.layers);
  in.experts_per_layer = static_cast<int>(m.experts);
  in.attention_ranks = shape.attention_ranks;
  in.expert_ranks = shape.expert_ranks;
  const PassSeconds attention = a.cost->Attention(b);
  in.attention_seconds = attention.forward;
  if (head_aware) in.attention_seconds += a.cost->Head(b) * attention.forward / attention.Total() / in.layers;
  in.expert_rank_seconds =
      e.cost->Expert(tokens_per_expert).forward * ExpertsOnBusiestRank(in.experts_per_layer, shape.expert_ranks);
  in.offloaded_expert_seconds = a.cost->Expert(tokens_per_expert).forward;
  in.n_min = memory.n_min;
  in.n_max = memory.n_max;
  return in;
}

ZebraStepSpec GroupStepSpec(const PlanningContext& ctx, const GroupShape& shape, const DataParallelWorld& world) {
  const ModelShape& m = ctx.model();
  const KindContext& a = ctx.Kind(shape.attention_gpu);
  const KindContext& e = ctx.Kind(shape.expert_gpu);
  const int L = static_cast<int>(m.layers);
  const int n = static_cast<int>(m.experts);
  const int M = shape.attention_ranks, N = shape.expert_ranks;
  const double b = static_cast<double>(shape.sequences_per_attention_rank) / shape.micro_batches;
  const double tokens = b * static_cast<double>(ctx.seq_len());  // per attention rank per micro-batch
  const double tokens_per_expert = M * tokens * static_cast<double>(m.top_k) / n;

  ZebraStepSpec spec;
  spec.layers = L;
  spec.micro_batches = shape.micro_batches;
  spec.attention = a.cost->Attention(b);
  spec.head = a.cost->Head(b);
  const PassSeconds on_expert_rank = e.cost->Expert(tokens_per_expert);
  const PassSeconds on_attention_rank = a.cost->Expert(tokens_per_expert);

  const GroupLinks links = LinksOf(ctx, shape);
  const LinkModel attention_link = ctx.Link(shape.attention_gpu, links.remote, links.attention_nic_sharing);
  const LinkModel expert_link = ctx.Link(shape.expert_gpu, links.remote, links.expert_nic_sharing);
  const double bytes_per_token = DispatchBytesPerToken(m);

  int most_offloaded = 0;
  int most_on_expert_rank = 0;
  for (int l = 0; l < L; ++l) {
    const int offloaded = OffloadedAt(shape, l);
    const int on_rank = ExpertsOnBusiestRank(n - offloaded, N);
    most_offloaded += offloaded / M;
    most_on_expert_rank += on_rank;
    // The busiest expert rank's share of the routed rows and the unique
    // tokens it receives per token: uniform routing's, or a run's (with
    // Asym-EA's offload the routing is taken as uniform).
    double routed_share = static_cast<double>(on_rank) / n;
    double reach = ReachProbability(n, on_rank, m.top_k);
    if (const RoutingLoad* load = ctx.Load(N); load && offloaded == 0) {
      routed_share = load->busiest_routed_share[l];
      reach = load->busiest_dedup_per_token[l];
    }
    spec.expert_rank.push_back(Scaled(on_expert_rank, routed_share * n));
    spec.offloaded_experts.push_back(Scaled(on_attention_rank, static_cast<double>(offloaded) / M));

    const double to_expert_ranks = tokens * bytes_per_token * (n - offloaded) / n;
    const double to_attention_peers = tokens * bytes_per_token * offloaded / n * (M - 1) / M;
    const int peers = N + (offloaded > 0 ? M - 1 : 0);
    const double send = attention_link.Seconds(to_expert_ranks + to_attention_peers, peers);
    const double receive = expert_link.Seconds(M * tokens * bytes_per_token * routed_share, M);
    const double whole = std::max(send, receive);
    double deduplicated = whole;
    if (ctx.dedup()) {
      // Rows per token: to each owner rank it reaches, one. Expert ranks hold
      // n - offloaded experts (the busiest on_rank), attention peers
      // offloaded / M each.
      const double row_bytes = bytes_per_token / static_cast<double>(m.top_k);
      std::vector<int64_t> owners(static_cast<size_t>(N), (n - offloaded) / N);
      for (int r = 0; r < (n - offloaded) % N; ++r) ++owners[r];
      if (offloaded > 0) owners.insert(owners.end(), M - 1, offloaded / M);
      const double rows_out = ExpectedDestinations(n, owners, m.top_k);
      const double rows_in = M * reach;
      deduplicated = std::max(attention_link.Seconds(tokens * rows_out * row_bytes, peers),
                              expert_link.Seconds(tokens * rows_in * row_bytes, M));
      // Node level (the engine's parallel.dedup node): when the expert ranks
      // are on other machines than the attention ranks and share machines
      // (q of a group's per machine), a token crosses to each expert
      // machine once; that machine's first expert rank relays each of the
      // other q - 1 their unique tokens over the machine's own link.
      const int q = std::min(N, ctx.Kind(shape.expert_gpu).max_per_node);
      if (ctx.dedup_depth() != "rank" && links.remote && q >= 2) {
        std::vector<int64_t> machines;
        for (int r = 0; r < N; ++r) {
          if (r % q == 0) machines.push_back(0);
          machines.back() += owners[r];
        }
        if (offloaded > 0) machines.insert(machines.end(), M - 1, offloaded / M);
        const int64_t on_machine = std::min<int64_t>(n - offloaded, static_cast<int64_t>(on_rank) * q);
        const int hops = static_cast<int>(machines.size());  // expert machines and attention peers
        // Only the machine's relays receive across machines: its NIC is
        // shared by the relays of the groups on it, not by every GPU.
        const LinkModel relay_link =
            ctx.Link(shape.expert_gpu, true, std::max(1, links.expert_nic_sharing / q));
        const double across = std::max(
            attention_link.Seconds(tokens * ExpectedDestinations(n, machines, m.top_k) * row_bytes, hops),
            relay_link.Seconds(M * tokens * ReachProbability(n, on_machine, m.top_k) * row_bytes, M));
        const LinkModel inside = ctx.Link(shape.expert_gpu, false);
        const double relay =
            inside.Seconds(M * tokens * (q - 1) * ReachProbability(n, on_rank, m.top_k) * row_bytes, M * (q - 1));
        const double node = across + relay;
        if (ctx.dedup_depth() == "node" || node < (1.0 - kNodeMargin) * deduplicated) deduplicated = node;
      }
    }
    spec.dispatch.push_back(deduplicated);
    spec.combine.push_back(whole);
    spec.dispatch_backward.push_back(whole);
    spec.combine_backward.push_back(deduplicated);
  }

  const double grad_bytes = kActivationBytes;  // fp16/bf16 gradients
  const double expert_params = m.ExpertParams();
  spec.attention_sync = ExpertlessGradientSync(ctx, shape.attention_gpu, world.attention_ranks);
  for (int l = 0; l < L; ++l) {
    const int offloaded = OffloadedAt(shape, l);
    const int on_rank = ExpertsOnBusiestRank(n - offloaded, N);
    spec.offloaded_expert_sync.push_back(
        ctx.AllReduceSeconds(shape.attention_gpu, grad_bytes * offloaded / M * expert_params, world.groups));
    spec.expert_sync.push_back(ctx.AllReduceSeconds(shape.expert_gpu, grad_bytes * on_rank * expert_params, world.groups));
  }
  spec.attention_optimizer = a.cost->Optimizer(m.ExpertlessParams() + most_offloaded * expert_params);
  spec.expert_optimizer = e.cost->Optimizer(most_on_expert_rank * expert_params);
  return spec;
}

GradientSync ExpertlessGradientSync(const PlanningContext& ctx, const std::string& kind, int participants) {
  const ModelShape& m = ctx.model();
  const double embedding = static_cast<double>(m.vocab * m.hidden);
  GradientSync sync;
  sync.head = ctx.AllReduceSeconds(kind, kActivationBytes * (embedding + m.hidden), participants);
  sync.layer = ctx.AllReduceSeconds(kind, kActivationBytes * m.AttentionParamsPerLayer(), participants);
  sync.embedding = ctx.AllReduceSeconds(kind, kActivationBytes * embedding, participants);
  return sync;
}

std::vector<int> MicroBatchCandidates(int s, int cap) {
  std::vector<int> out;
  for (int r = 1; r <= std::min(s, cap); ++r) {
    if (s % r == 0) out.push_back(r);
  }
  if (out.empty()) out.push_back(1);
  return out;
}

std::string ShapeText(const GroupShape& s) {
  return std::to_string(s.groups) + " x (" + std::to_string(s.attention_ranks) + " " + s.attention_gpu + " : " +
         std::to_string(s.expert_ranks) + " " + s.expert_gpu + ")";
}

bool FitsInMemory(const PlanningContext& ctx, const GroupShape& shape, bool allow_asym_ea, int max_micro_batches) {
  const AsymChunks chunks = AsymChunksOf(shape, allow_asym_ea);
  GroupShape candidate = shape;
  candidate.offloaded.clear();
  for (int r : MicroBatchCandidates(shape.sequences_per_attention_rank, max_micro_batches)) {
    candidate.micro_batches = r;
    if (GroupMemory(ctx, candidate, Schedule::kZebra).Problem(chunks.ok, chunks.n1, chunks.n2).empty()) return true;
  }
  return false;
}

GroupEvaluation EvaluateGroup(const PlanningContext& ctx, const GroupShape& shape, const DataParallelWorld& world,
                              Schedule schedule, bool allow_asym_ea, int max_micro_batches) {
  if (shape.attention_ranks < 1 || shape.expert_ranks < 1 || shape.sequences_per_attention_rank < 1) {
    throw Error("planner: a ZP group needs an attention rank, an expert rank and a sequence");
  }
  const AsymChunks chunks = AsymChunksOf(shape, allow_asym_ea && schedule == Schedule::kZebra);
  const bool asym_ok = chunks.ok;
  const int n1 = chunks.n1, n2 = chunks.n2;

  GroupEvaluation best;
  bool found = false;
  std::string problem;
  for (int r : MicroBatchCandidates(shape.sequences_per_attention_rank, max_micro_batches)) {
    GroupShape candidate = shape;
    candidate.micro_batches = r;
    candidate.offloaded.clear();
    const ZpMemory memory = GroupMemory(ctx, candidate, schedule);
    const std::string why = memory.Problem(asym_ok, n1, n2);
    if (!why.empty()) {
      problem = why;
      continue;
    }
    AsymEaResult asym;
    std::vector<std::vector<int>> options;
    std::vector<AsymEaResult> proposals;
    if (memory.n_min == 0) {
      options.push_back({});
      proposals.push_back({});
    }
    if (asym_ok) {
      for (bool head_aware : {false, true}) {
        try {
          const AsymEaResult proposal =
              AssignAsymmetricExperts(GroupAsymEaInputs(ctx, candidate, memory, head_aware));
          if (!head_aware) asym = proposal;
          if (proposal.TotalOffloaded() > 0 &&
              std::find(options.begin(), options.end(), proposal.offloaded) == options.end()) {
            options.push_back(proposal.offloaded);
            proposals.push_back(proposal);
          }
        } catch (const Error& e) {
          problem = e.what();
        }
      }
    }
    for (size_t o = 0; o < options.size(); ++o) {
      const std::vector<int>& offloaded = options[o];
      candidate.offloaded = offloaded;
      const ZebraStepSpec spec = GroupStepSpec(ctx, candidate, world);
      const StepGraph graph = schedule == Schedule::kZebra ? BuildZebraStep(spec) : BuildSequentialStep(spec);
      const SimulationResult sim = Simulate(graph);
      if (!found || sim.step_seconds < best.step_seconds) {
        found = true;
        best.shape = candidate;
        best.step_seconds = sim.step_seconds;
        best.attention_busy = sim.BusyFraction("attention");
        best.expert_busy = sim.BusyFraction("expert");
        best.asym_ea_used = !offloaded.empty();
        best.asym_ea = offloaded.empty() ? asym : proposals[o];
        best.memory = memory;
      }
    }
  }
  if (!found) {
    throw Error("model does not fit in a " + std::to_string(shape.attention_ranks) + " " + shape.attention_gpu +
                " : " + std::to_string(shape.expert_ranks) + " " + shape.expert_gpu + " group with " +
                std::to_string(shape.sequences_per_attention_rank) + " sequences per attention rank: " + problem);
  }
  return best;
}

}  // namespace hetermoe::planner
