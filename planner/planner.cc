// The plan search (see planner.h for the steps).
#include "planner/planner.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>

#include "common/error.h"
#include "planner/baselines.h"
#include "planner/zp_group.h"

namespace hetermoe::planner {
namespace {

// How many shapes per class get the full simulation after the estimate.
constexpr int kShapesSimulated = 6;

// A pair of GPU kinds in the attention / expert roles and how many GPUs of
// each it may use. `shared`: one kind in both roles (a one-kind cluster).
struct ClassCaps {
  std::string attention;
  std::string expert;
  int attention_gpus = 0;
  int expert_gpus = 0;
  bool shared = false;
};

struct Candidate {
  std::vector<std::string> attention_kinds, expert_kinds;
  std::vector<GroupEvaluation> classes;
  double step_seconds = std::numeric_limits<double>::infinity();
  std::vector<std::string> notes;
};

int CeilDiv(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

void ValidateRequest(const PlanRequest& r) {
  if (r.seq_len < 1) throw Error("seq-len " + std::to_string(r.seq_len) + " is not positive");
  if (r.global_batch < 1) throw Error("global-batch " + std::to_string(r.global_batch) + " is not positive");
  if (r.model.max_positions > 0 && r.seq_len > r.model.max_positions) {
    throw Error(r.model.source + ": max_position_embeddings " + std::to_string(r.model.max_positions) +
                " is shorter than seq-len " + std::to_string(r.seq_len));
  }
  if (r.model.layers < 1 || r.model.experts < 1 || r.model.top_k < 1 || r.model.top_k > r.model.experts) {
    throw Error(r.model.source + ": the planner needs layers >= 1 and 1 <= num_experts_per_tok <= num_local_experts");
  }
  if (r.gpu_budget < 0) throw Error("gpu-budget " + std::to_string(r.gpu_budget) + " is negative");
  if (r.gpu_budget == 1) throw Error("gpu-budget 1 is too small: a ZP group needs an attention and an expert GPU");
  if (r.max_micro_batches < 1) throw Error("max-micro-batches must be positive");
  if (r.inventory.TotalGpus() < 2) {
    throw Error(r.inventory.source + ": " + std::to_string(r.inventory.TotalGpus()) +
                " GPU(s); a ZP group needs at least an attention and an expert GPU");
  }
}

// Expert time / attention time of one sequence: high = attention is cheap
// here relative to experts, so the kind should do attention.
double AttentionAffinity(const PlanningContext& ctx, const std::string& kind) {
  const ModelShape& m = ctx.model();
  const ComputeCostModel& cost = *ctx.Kind(kind).cost;
  return cost.Expert(static_cast<double>(ctx.seq_len() * m.top_k)).Total() / cost.Attention(1).Total();
}

// Expert GPUs of kind `e` that balance one attention GPU of kind `a`.
double BalanceRatio(const PlanningContext& ctx, const std::string& a, const std::string& e) {
  const ModelShape& m = ctx.model();
  const double attention = m.layers * ctx.Kind(a).cost->Attention(1).Total() + ctx.Kind(a).cost->Head(1);
  const double experts = m.layers * ctx.Kind(e).cost->Expert(static_cast<double>(ctx.seq_len() * m.top_k)).Total();
  return experts / attention;
}

// Pairs attention kinds (fastest at attention first) with expert kinds
// (fastest at experts first), each attention GPU taking the expert GPUs that
// balance it, until one side runs out (see planner.h).
std::vector<ClassCaps> PairKinds(const PlanningContext& ctx, const std::vector<std::pair<std::string, int>>& attention,
                                 const std::vector<std::pair<std::string, int>>& expert) {
  std::vector<ClassCaps> classes;
  auto add = [&](const std::string& a, const std::string& e, int a_gpus, int e_gpus, bool shared) {
    for (ClassCaps& c : classes) {
      if (c.attention == a && c.expert == e) {
        c.attention_gpus += a_gpus;
        c.expert_gpus += e_gpus;
        return;
      }
    }
    classes.push_back({a, e, a_gpus, e_gpus, shared});
  };
  std::vector<int> a_left, e_left;
  for (const auto& a : attention) a_left.push_back(a.second);
  for (const auto& e : expert) e_left.push_back(e.second);
  size_t i = 0, j = 0;
  while (i < attention.size() && j < expert.size()) {
    const double ratio = BalanceRatio(ctx, attention[i].first, expert[j].first);
    int take_a = a_left[i], take_e = e_left[j];
    if (a_left[i] * ratio <= e_left[j]) {
      take_e = std::clamp(static_cast<int>(std::lround(a_left[i] * ratio)), 1, e_left[j]);
    } else {
      take_a = std::clamp(static_cast<int>(std::lround(e_left[j] / ratio)), 1, a_left[i]);
    }
    add(attention[i].first, expert[j].first, take_a, take_e, false);
    a_left[i] -= take_a;
    e_left[j] -= take_e;
    if (a_left[i] == 0) ++i;
    if (e_left[j] == 0) ++j;
  }
  // What one side has left would idle. A kind that already has a partner
  // gives its rest to that pair (rounding); otherwise its GPUs form groups of
  // their own kind in both roles.
  auto place_rest = [&](const std::string& kind, int rest, bool is_attention) {
    if (rest <= 0) return;
    for (ClassCaps& c : classes) {
      if (!c.shared && (is_attention ? c.attention : c.expert) == kind) {
        (is_attention ? c.attention_gpus : c.expert_gpus) += rest;
        return;
      }
    }
    if (rest >= 2) add(kind, kind, rest, rest, true);
  };
  for (size_t k = i; k < attention.size(); ++k) place_rest(attention[k].first, a_left[k], true);
  for (size_t k = j; k < expert.size(); ++k) place_rest(expert[k].first, e_left[k], false);
  return classes;
}

// Bottleneck estimate of a shape's step: the busiest resource's total work,
// Asym-EA balancing assumed where the shape allows it, plus one micro-batch's
// trip through the layers (fill and drain).
double EstimateStep(const PlanningContext& ctx, const ClassCaps& caps, int M, int N, int S, bool asym_ea) {
  const ModelShape& m = ctx.model();
  const KindContext& a = ctx.Kind(caps.attention);
  const KindContext& e = ctx.Kind(caps.expert);
  const double n = static_cast<double>(m.experts);
  const double T = static_cast<double>(ctx.seq_len());
  const double per_expert_tokens = M * T * m.top_k / n;
  const double attention = a.cost->Attention(1).Total();
  const double one_on_expert_rank = e.cost->Expert(per_expert_tokens).Total();
  const double one_on_attention_rank = a.cost->Expert(per_expert_tokens).Total();
  double att = attention;
  double exp = one_on_expert_rank * std::ceil(n / N);
  if (asym_ea && AsymEaShapeOk(M, N) && exp > att) {
    const double moved = std::min((exp - att) / (one_on_attention_rank / M + one_on_expert_rank / N), n);
    att += one_on_attention_rank * moved / M;
    exp = one_on_expert_rank * (n - moved) / N;
  }
  const bool remote = !caps.shared || M + N > a.max_per_node;
  const double bytes = T * DispatchBytesPerToken(m);
  const double link = std::max(ctx.Link(caps.attention, remote).Seconds(bytes, N),
                               ctx.Link(caps.expert, remote).Seconds(M * bytes / N, M));
  const double per_micro_batch = std::max({att, exp, 2 * link});
  return m.layers * S * per_micro_batch + S * a.cost->Head(1) + m.layers * (att + exp + 2 * link);
}

// The best shape for one class given the sequences it should take.
GroupEvaluation SearchShape(const PlanningContext& ctx, const ClassCaps& caps, int64_t sequences,
                            const PlanRequest& request) {
  std::string problem;
  const int n = static_cast<int>(ctx.model().experts);
  const int cap_total = caps.attention_gpus;  // shared: the kind's whole count
  const int max_m = static_cast<int>(std::min<int64_t>(
      {caps.shared ? cap_total - 1 : caps.attention_gpus, kMaxAttentionRanks, sequences}));
  const int max_n = std::min(caps.shared ? cap_total - 1 : caps.expert_gpus, n);

  struct Estimate {
    double step;
    int gpus, m, n, groups, s;
  };
  std::vector<Estimate> estimates;
  for (int M = 1; M <= max_m; ++M) {
    for (int N = 1; N <= max_n; ++N) {
      int groups = caps.shared ? cap_total / (M + N) : std::min(caps.attention_gpus / M, caps.expert_gpus / N);
      groups = static_cast<int>(std::min<int64_t>(groups, sequences / M));
      if (groups < 1) continue;
      const int S = CeilDiv(sequences, static_cast<int64_t>(groups) * M);
      estimates.push_back({EstimateStep(ctx, caps, M, N, S, request.asym_ea), groups * (M + N), M, N, groups, S});
    }
  }
  std::sort(estimates.begin(), estimates.end(), [](const Estimate& x, const Estimate& y) {
    return x.step != y.step ? x.step < y.step : x.gpus < y.gpus;
  });

  GroupEvaluation best;
  bool found = false;
  int simulated = 0;
  for (const Estimate& est : estimates) {
    if (simulated >= kShapesSimulated) break;
    GroupShape shape;
    shape.attention_gpu = caps.attention;
    shape.expert_gpu = caps.expert;
    shape.attention_ranks = est.m;
    shape.expert_ranks = est.n;
    shape.groups = est.groups;
    shape.sequences_per_attention_rank = est.s;
    const DataParallelWorld world{est.groups * est.m, est.groups};
    try {
      const GroupEvaluation e =
          EvaluateGroup(ctx, shape, world, Schedule::kZebra, request.asym_ea, request.max_micro_batches);
      ++simulated;
      if (!found || e.step_seconds < best.step_seconds * (1 - 1e-9) ||
          (e.step_seconds <= best.step_seconds * (1 + 1e-9) && e.shape.Gpus() < best.shape.Gpus())) {
        best = e;
        found = true;
      }
    } catch (const Error& e) {
      // Memory: try the next shape, but report the most promising one's reason.
      if (problem.empty()) problem = e.what();
    }
  }
  if (!found) {
    if (problem.empty()) {
      problem = "no ZP group can be formed from " + std::to_string(caps.attention_gpus) + " " + caps.attention +
                " and " + std::to_string(caps.expert_gpus) + " " + caps.expert;
    } else {
      problem += " (fewer tokens per step fit: lower --global-batch or --seq-len, or add GPUs)";
    }
    throw Error(problem);
  }
  return best;
}

DataParallelWorld WorldOf(const std::vector<GroupEvaluation>& classes) {
  DataParallelWorld world{0, 0};
  for (const GroupEvaluation& c : classes) {
    world.attention_ranks += c.shape.groups * c.shape.attention_ranks;
    world.groups += c.shape.groups;
  }
  return world;
}

// Keeps the groups with the best tokens/s per GPU within the budget.
void ApplyBudget(std::vector<GroupEvaluation>& classes, int budget) {
  if (budget <= 0) return;
  auto used = [&] {
    int total = 0;
    for (const GroupEvaluation& c : classes) total += c.shape.Gpus();
    return total;
  };
  while (used() > budget) {
    // Drop a group from the class with the least throughput per GPU.
    GroupEvaluation* worst = nullptr;
    double worst_rate = std::numeric_limits<double>::infinity();
    for (GroupEvaluation& c : classes) {
      if (c.shape.groups == 0) continue;
      const double rate = c.shape.attention_ranks * c.shape.sequences_per_attention_rank /
                          (c.step_seconds * (c.shape.attention_ranks + c.shape.expert_ranks));
      if (rate < worst_rate) {
        worst_rate = rate;
        worst = &c;
      }
    }
    if (worst == nullptr) break;
    --worst->shape.groups;
  }
  classes.erase(std::remove_if(classes.begin(), classes.end(),
                               [](const GroupEvaluation& c) { return c.shape.groups == 0; }),
                classes.end());
}

// Splits the global batch between classes so that the slowest class's step
// is as short as possible: binary search on the step time T, where a class
// can take (groups x M x S) sequences for the largest S whose simulated step
// fits in T. Whole groups the batch does not need are then released,
// slowest class first. Every attention rank keeps at least one sequence.
void SplitBatch(const PlanningContext& ctx, const PlanRequest& request, std::vector<GroupEvaluation>& classes) {
  const int64_t G = request.global_batch;
  const DataParallelWorld world = WorldOf(classes);
  constexpr double kNever = std::numeric_limits<double>::infinity();

  std::vector<std::map<int, GroupEvaluation>> memo(classes.size());
  std::vector<std::map<int, bool>> fits(classes.size());
  std::string problem;
  auto step = [&](size_t c, int s) -> double {
    if (const auto it = fits[c].find(s); it != fits[c].end()) {
      return it->second ? memo[c].at(s).step_seconds : kNever;
    }
    GroupShape shape = classes[c].shape;
    shape.sequences_per_attention_rank = s;
    shape.offloaded.clear();
    try {
      memo[c].emplace(s, EvaluateGroup(ctx, shape, world, Schedule::kZebra, request.asym_ea,
                                        request.max_micro_batches));
      fits[c][s] = true;
      return memo[c].at(s).step_seconds;
    } catch (const Error& e) {
      if (problem.empty()) problem = e.what();
      fits[c][s] = false;
      return kNever;
    }
  };
  auto rows = [&](size_t c) { return static_cast<int64_t>(classes[c].shape.groups) * classes[c].shape.attention_ranks; };
  // Sequences per attention rank at which class c alone would cover the batch.
  auto alone = [&](size_t c) { return std::max(1, CeilDiv(G, rows(c))); };
  // Most sequences per attention rank class c can take within `t` (0: none).
  auto most_within = [&](size_t c, double t) {
    if (step(c, 1) > t) return 0;
    int lo = 1, hi = alone(c);
    if (step(c, hi) <= t) return hi;
    while (hi - lo > 1) {
      const int mid = lo + (hi - lo) / 2;
      (step(c, mid) <= t ? lo : hi) = mid;
    }
    return lo;
  };
  auto covered = [&](double t) {
    int64_t total = 0;
    for (size_t c = 0; c < classes.size(); ++c) total += rows(c) * most_within(c, t);
    return total >= G;
  };

  double hi = kNever;
  for (size_t c = 0; c < classes.size(); ++c) hi = std::min(hi, step(c, alone(c)));
  if (!std::isfinite(hi)) {
    // No class can take the whole batch alone (memory): grow T until together they can.
    hi = kNever;
    for (size_t c = 0; c < classes.size(); ++c) hi = std::min(hi, step(c, 1));
    if (!std::isfinite(hi)) throw Error(problem);
    for (int i = 0; i < 64 && !covered(hi); ++i) hi *= 2;
    if (!covered(hi)) throw Error(problem + " (fewer tokens per step fit: lower --global-batch or --seq-len, or add GPUs)");
  }
  double lo = 0;
  for (int i = 0; i < 60 && hi - lo > 1e-6 * hi; ++i) {
    const double mid = 0.5 * (lo + hi);
    (covered(mid) ? hi : lo) = mid;
  }

  std::vector<int> sequences(classes.size());
  int64_t total = 0;
  for (size_t c = 0; c < classes.size(); ++c) {
    sequences[c] = most_within(c, hi);
    total += rows(c) * sequences[c];
  }
  std::vector<size_t> slowest_first(classes.size());
  std::iota(slowest_first.begin(), slowest_first.end(), 0);
  std::sort(slowest_first.begin(), slowest_first.end(), [&](size_t x, size_t y) {
    return (sequences[x] ? step(x, sequences[x]) : kNever) > (sequences[y] ? step(y, sequences[y]) : kNever);
  });
  for (size_t c : slowest_first) {
    GroupShape& shape = classes[c].shape;
    if (sequences[c] == 0) {
      shape.groups = 0;
      continue;
    }
    const int64_t per_group = static_cast<int64_t>(shape.attention_ranks) * sequences[c];
    while (shape.groups > 0 && total - per_group >= G) {
      --shape.groups;
      total -= per_group;
    }
    shape.sequences_per_attention_rank = sequences[c];
  }
  classes.erase(std::remove_if(classes.begin(), classes.end(), [](const GroupEvaluation& c) { return c.shape.groups == 0; }),
                classes.end());
  // Released groups shrink the data-parallel world: evaluate once more.
  const DataParallelWorld final_world = WorldOf(classes);
  for (GroupEvaluation& c : classes) {
    GroupShape shape = c.shape;
    shape.offloaded.clear();
    c = EvaluateGroup(ctx, shape, final_world, Schedule::kZebra, request.asym_ea, request.max_micro_batches);
  }
}

Candidate EvaluateRoles(const PlanningContext& ctx, const PlanRequest& request,
                        const std::vector<ClassCaps>& all_caps) {
  Candidate candidate;
  int attention_total = 0;
  for (const ClassCaps& c : all_caps) attention_total += c.attention_gpus;
  std::string problem;
  for (const ClassCaps& caps : all_caps) {
    const double share = static_cast<double>(request.global_batch) * caps.attention_gpus / attention_total;
    const int64_t sequences = std::max<int64_t>(1, std::llround(share));
    try {
      candidate.classes.push_back(SearchShape(ctx, caps, sequences, request));
    } catch (const Error& e) {
      candidate.notes.push_back(std::string("unused: ") + caps.attention + "/" + caps.expert + ": " + e.what());
      problem = e.what();
    }
  }
  if (candidate.classes.empty()) throw Error(problem);
  ApplyBudget(candidate.classes, request.gpu_budget);
  if (candidate.classes.empty()) {
    throw Error("gpu-budget " + std::to_string(request.gpu_budget) + " is smaller than the smallest ZP group");
  }
  SplitBatch(ctx, request, candidate.classes);
  candidate.step_seconds = 0;
  for (const GroupEvaluation& c : candidate.classes) candidate.step_seconds = std::max(candidate.step_seconds, c.step_seconds);
  return candidate;
}

// Expert ids per rank for one layer: contiguous blocks over the N expert
// ranks; Asym-EA takes the last experts of every expert rank's block and
// deals them to the attention ranks, n1 at a time.
LayerPlacement PlaceLayer(int experts, int M, int N, int offloaded) {
  LayerPlacement p;
  p.expert_ranks.resize(N);
  p.attention_ranks.resize(M);
  std::vector<int> moved;
  const int per_rank_moved = offloaded / N;  // == chunks * n2
  for (int r = 0; r < N; ++r) {
    const int begin = experts * r / N, end = experts * (r + 1) / N;
    for (int id = begin; id < end; ++id) {
      if (id >= end - per_rank_moved) {
        moved.push_back(id);
      } else {
        p.expert_ranks[r].push_back(id);
      }
    }
  }
  const int per_attention_rank = M > 0 ? offloaded / M : 0;
  for (size_t i = 0; i < moved.size(); ++i) {
    p.attention_ranks[std::min<size_t>(i / std::max(1, per_attention_rank), M - 1)].push_back(moved[i]);
  }
  return p;
}

std::vector<GpuSlot> Slots(const Inventory& inventory, const std::string& kind) {
  std::vector<GpuSlot> slots;
  for (const InventoryNode& node : inventory.nodes) {
    if (node.gpu != kind) continue;
    for (int i = 0; i < node.count; ++i) slots.push_back({node.name, i, node.gpu});
  }
  return slots;
}

Plan Assemble(const PlanningContext& ctx, const PlanRequest& request, Candidate& best) {
  Plan plan;
  plan.model = request.model;
  plan.model_source = request.model.source;
  plan.seq_len = request.seq_len;
  plan.global_batch = request.global_batch;
  plan.precision = ctx.precision();
  plan.attention_kinds = best.attention_kinds;
  plan.expert_kinds = best.expert_kinds;
  plan.notes = best.notes;

  const int L = static_cast<int>(request.model.layers), n = static_cast<int>(request.model.experts);
  std::map<std::string, std::vector<GpuSlot>> free_slots;
  std::map<std::string, size_t> next;
  for (const std::string& kind : ctx.Kinds()) free_slots[kind] = Slots(request.inventory, kind);

  auto take = [&](const std::string& kind, int count) {
    std::vector<GpuSlot> out;
    for (int i = 0; i < count; ++i) out.push_back(free_slots[kind].at(next[kind]++));
    return out;
  };

  std::map<std::string, double> busy_seconds, ranks;
  for (size_t c = 0; c < best.classes.size(); ++c) {
    const GroupEvaluation& e = best.classes[c];
    GroupClass gc;
    gc.shape = e.shape;
    gc.asym_ea = e.asym_ea;
    gc.asym_ea_used = e.asym_ea_used;
    gc.step_seconds = e.step_seconds;
    gc.attention_busy = e.attention_busy;
    gc.expert_busy = e.expert_busy;
    gc.memory = e.memory;
    for (int l = 0; l < L; ++l) {
      const int offloaded = e.shape.offloaded.empty() ? 0 : e.shape.offloaded[l];
      gc.placement.push_back(PlaceLayer(n, e.shape.attention_ranks, e.shape.expert_ranks, offloaded));
    }
    for (int g = 0; g < e.shape.groups; ++g) {
      ZpGroup group;
      group.group_class = static_cast<int>(c);
      group.attention = take(e.shape.attention_gpu, e.shape.attention_ranks);
      group.expert = take(e.shape.expert_gpu, e.shape.expert_ranks);
      plan.groups.push_back(std::move(group));
    }
    const double a_ranks = e.shape.groups * e.shape.attention_ranks;
    const double e_ranks = e.shape.groups * e.shape.expert_ranks;
    busy_seconds[e.shape.attention_gpu] += e.attention_busy * e.step_seconds * a_ranks;
    busy_seconds[e.shape.expert_gpu] += e.expert_busy * e.step_seconds * e_ranks;
    ranks[e.shape.attention_gpu] += a_ranks;
    ranks[e.shape.expert_gpu] += e_ranks;
    plan.classes.push_back(std::move(gc));
  }
  for (const std::string& kind : ctx.Kinds()) {
    for (size_t i = next[kind]; i < free_slots[kind].size(); ++i) plan.unused.push_back(free_slots[kind][i]);
  }

  plan.predicted.step_seconds = best.step_seconds;
  plan.predicted.tokens_per_second = static_cast<double>(request.global_batch * request.seq_len) / best.step_seconds;
  for (const auto& [kind, r] : ranks) {
    plan.predicted.utilisation[kind] = busy_seconds[kind] / (best.step_seconds * r);
  }

  // The first class's step again, with its timeline.
  const DataParallelWorld world = WorldOf(best.classes);
  const ZebraStepSpec spec = GroupStepSpec(ctx, best.classes.front().shape, world);
  plan.timeline = Simulate(BuildZebraStep(spec), true);

  if (request.baselines) {
    GpuCounts used;
    for (const auto& [kind, r] : ranks) used.push_back({kind, static_cast<int>(r)});
    plan.baselines.ep = PredictEp(ctx, used, request.global_batch);
    plan.baselines.ep_ideal = PredictEpIdeal(ctx, used, request.global_batch);
    plan.baselines.pp = PredictPipeline(ctx, used, request.global_batch);
    plan.baselines.distep = PredictDistEp(ctx, plan.classes, world, request.global_batch);
  }
  if (!plan.unused.empty()) {
    plan.notes.push_back(std::to_string(plan.unused.size()) + " GPU(s) unused: no group shape gains from them");
  }
  return plan;
}

}  // namespace

Plan MakePlan(const PlanRequest& request, const GpuProfileTable& profiles) {
  ValidateRequest(request);
  Inventory inventory = request.inventory;
  ValidateInventory(inventory, profiles);

  std::vector<const GpuProfile*> kinds_used;
  for (const std::string& kind : inventory.Kinds()) kinds_used.push_back(&profiles.Find(kind));
  const PlanningContext ctx(request.model, inventory, profiles, request.seq_len, CommonPrecision(kinds_used));

  // GPU counts, scaled down to the budget before the search.
  std::vector<std::pair<std::string, int>> kinds;
  const int total = inventory.TotalGpus();
  for (const std::string& kind : inventory.Kinds()) {
    int count = inventory.Count(kind);
    if (request.gpu_budget > 0 && request.gpu_budget < total) {
      count = std::max(1, static_cast<int>(std::floor(static_cast<double>(count) * request.gpu_budget / total)));
    }
    kinds.push_back({kind, count});
  }
  std::stable_sort(kinds.begin(), kinds.end(), [&](const auto& x, const auto& y) {
    return AttentionAffinity(ctx, x.first) > AttentionAffinity(ctx, y.first);
  });

  std::vector<std::vector<ClassCaps>> role_splits;
  std::vector<std::pair<std::vector<std::string>, std::vector<std::string>>> role_names;
  if (kinds.size() == 1) {
    if (kinds[0].second < 2) throw Error("gpu-budget leaves fewer than 2 GPUs");
    role_splits.push_back({{kinds[0].first, kinds[0].first, kinds[0].second, kinds[0].second, true}});
    role_names.push_back({{kinds[0].first}, {kinds[0].first}});
  } else {
    for (size_t split = 1; split < kinds.size(); ++split) {
      std::vector<std::pair<std::string, int>> attention(kinds.begin(), kinds.begin() + split);
      std::vector<std::pair<std::string, int>> expert(kinds.begin() + split, kinds.end());
      std::stable_sort(attention.begin(), attention.end(), [&](const auto& x, const auto& y) {
        return ctx.Kind(x.first).cost->Attention(1).Total() < ctx.Kind(y.first).cost->Attention(1).Total();
      });
      std::stable_sort(expert.begin(), expert.end(), [&](const auto& x, const auto& y) {
        const double tokens = static_cast<double>(ctx.seq_len() * ctx.model().top_k);
        return ctx.Kind(x.first).cost->Expert(tokens).Total() < ctx.Kind(y.first).cost->Expert(tokens).Total();
      });
      std::vector<std::string> a_names, e_names;
      for (const auto& a : attention) a_names.push_back(a.first);
      for (const auto& e : expert) e_names.push_back(e.first);
      role_splits.push_back(PairKinds(ctx, attention, expert));
      role_names.push_back({a_names, e_names});
    }
  }

  Candidate best;
  std::string problem;
  for (size_t i = 0; i < role_splits.size(); ++i) {
    if (role_splits[i].empty()) continue;
    try {
      Candidate c = EvaluateRoles(ctx, request, role_splits[i]);
      c.attention_kinds = role_names[i].first;
      c.expert_kinds = role_names[i].second;
      if (c.step_seconds < best.step_seconds) best = std::move(c);
    } catch (const Error& e) {
      problem = e.what();
    }
  }
  if (best.classes.empty()) {
    throw Error("no plan: " + (problem.empty() ? std::string("no ZP group can be formed") : problem));
  }
  return Assemble(ctx, request, best);
}

}  // namespace hetermoe::planner
