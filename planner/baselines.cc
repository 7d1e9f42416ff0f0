// EP, DistEP, EP-Ideal and pipeline-parallel predictions (see baselines.h).
#include "planner/baselines.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "common/error.h"

namespace hetermoe::planner {
namespace {

// One rank's all-to-all over `ranks` ranks of `kind` (EP inside a set of
// GPUs): (ranks - 1) / ranks of its bytes leave it, the part to other nodes
// through the shared NIC, the rest over the intra-node link.
double AllToAllSeconds(const PlanningContext& ctx, const std::string& kind, double bytes, int ranks) {
  if (ranks <= 1 || bytes <= 0) return 0;
  const int on_node = std::min(ctx.Kind(kind).max_per_node, ranks);
  const double remote_bytes = bytes * (ranks - on_node) / ranks;
  const double local_bytes = bytes * (on_node - 1) / ranks;
  return std::max(ctx.Link(kind, true).Seconds(remote_bytes, ranks - on_node),
                  ctx.Link(kind, false).Seconds(local_bytes, on_node - 1));
}

std::string Describe(const GpuCounts& gpus) {
  std::string out;
  for (const auto& [kind, count] : gpus) out += (out.empty() ? "" : " + ") + std::to_string(count) + " " + kind;
  return out;
}

BaselinePrediction Infeasible(std::string note) {
  BaselinePrediction p;
  p.feasible = false;
  p.note = std::move(note);
  return p;
}

}  // namespace

BaselinePrediction PredictEp(const PlanningContext& ctx, const GpuCounts& gpus, int64_t global_batch) {
  const ModelShape& m = ctx.model();
  const int64_t T = ctx.seq_len();
  GpuCounts sorted;
  for (const auto& g : gpus) {
    if (g.second > 0) sorted.push_back(g);
  }
  if (sorted.empty()) return Infeasible("no GPUs");
  // With fewer sequences than GPUs, the GPUs fastest at attention take them.
  std::sort(sorted.begin(), sorted.end(), [&](const auto& x, const auto& y) {
    return ctx.Kind(x.first).cost->Attention(1).Total() < ctx.Kind(y.first).cost->Attention(1).Total();
  });
  GpuCounts used;
  int64_t left = global_batch;
  for (const auto& [kind, count] : sorted) {
    const int take = static_cast<int>(std::min<int64_t>(count, left));
    if (take > 0) used.push_back({kind, take});
    left -= take;
  }
  int ranks = 0;
  for (const auto& g : used) ranks += g.second;
  const int sequences = static_cast<int>((global_batch + ranks - 1) / ranks);

  // Expert-parallel groups of up to n ranks hold every expert once;
  // beyond n ranks the groups are data-parallel replicas (DeepSpeed-MoE's
  // expert-data parallelism), whose expert gradients are all-reduced.
  const int ep = static_cast<int>(std::min<int64_t>(ranks, m.experts));
  const int replicas = std::max(1, ranks / ep);
  EpStepSpec spec;
  spec.layers = static_cast<int>(m.layers);
  spec.micro_batches = sequences;  // one sequence per micro-batch keeps activations smallest
  const double a2a_bytes = static_cast<double>(T) * DispatchBytesPerToken(m);
  const double experts_per_layer = std::ceil(static_cast<double>(m.experts) / ep);
  for (const auto& [kind, count] : used) {
    const KindContext& k = ctx.Kind(kind);
    const double need = EpRankBytes(m, T, 1, ep, spec.layers, true, 1);
    if (need > UsableBytes(k.gpu)) {
      return Infeasible("EP on " + Describe(used) + ": a " + kind + " rank needs " + GiB(need) + " of " +
                        GiB(UsableBytes(k.gpu)));
    }
    EpRankSpec rank;
    rank.kind = kind;
    rank.attention = k.cost->Attention(1);
    rank.experts = k.cost->Expert(static_cast<double>(T * m.top_k));  // uniform routing: T*k assignments per rank
    rank.head = k.cost->Head(1);
    rank.sync = ExpertlessGradientSync(ctx, kind, ranks);
    rank.sync.layer += ctx.AllReduceSeconds(kind, kActivationBytes * experts_per_layer * m.ExpertParams(), replicas);
    rank.optimizer = k.cost->Optimizer(m.ExpertlessParams() + m.layers * experts_per_layer * m.ExpertParams());
    spec.ranks.push_back(rank);
    spec.all_to_all = std::max(spec.all_to_all, AllToAllSeconds(ctx, kind, a2a_bytes, ep));
  }
  const SimulationResult sim = Simulate(BuildEpStep(spec));
  BaselinePrediction p;
  p.feasible = true;
  p.step_seconds = sim.step_seconds;
  p.tokens_per_second = static_cast<double>(global_batch * T) / sim.step_seconds;
  p.note = "EP on " + Describe(used) + ", expert-parallel degree " + std::to_string(ep) + ", " +
           std::to_string(sequences) + " sequences per rank";
  return p;
}

BaselinePrediction PredictEpIdeal(const PlanningContext& ctx, const GpuCounts& gpus, int64_t global_batch) {
  BaselinePrediction total;
  std::string notes;
  for (const auto& g : gpus) {
    if (g.second <= 0) continue;
    const BaselinePrediction alone = PredictEp(ctx, {g}, global_batch);
    if (alone.feasible) {
      total.feasible = true;
      total.tokens_per_second += alone.tokens_per_second;
      notes += (notes.empty() ? "" : "; ") + alone.note;
    } else {
      notes += (notes.empty() ? "" : "; ") + alone.note + " (counted as 0)";
    }
  }
  if (total.feasible) {
    total.step_seconds = static_cast<double>(global_batch * ctx.seq_len()) / total.tokens_per_second;
  }
  total.note = "sum of " + notes;
  return total;
}

BaselinePrediction PredictPipeline(const PlanningContext& ctx, const GpuCounts& gpus, int64_t global_batch) {
  const ModelShape& m = ctx.model();
  const int64_t T = ctx.seq_len();
  const int L = static_cast<int>(m.layers);
  GpuCounts stages;
  for (const auto& g : gpus) {
    if (g.second > 0) stages.push_back(g);
  }
  // Slowest attention first, so the fastest kind holds the LM head.
  std::sort(stages.begin(), stages.end(), [&](const auto& x, const auto& y) {
    return ctx.Kind(x.first).cost->Attention(1).Total() > ctx.Kind(y.first).cost->Attention(1).Total();
  });
  if (stages.empty()) return Infeasible("no GPUs");
  if (static_cast<int>(stages.size()) > L) return Infeasible("PP: fewer layers than GPU kinds");
  const int K = static_cast<int>(stages.size());

  int widest = 0;
  for (const auto& s : stages) widest = std::max(widest, s.second);
  const int64_t micro_batch = std::min<int64_t>(widest, global_batch);  // sequences
  const int64_t micro_batches = (global_batch + micro_batch - 1) / micro_batch;

  // Per stage: one layer's fwd+bwd time on a micro-batch, the head, the
  // activation hand-over to the next stage.
  std::vector<double> layer(K), head(K), handover(K);
  for (int s = 0; s < K; ++s) {
    const auto& [kind, count] = stages[s];
    const KindContext& k = ctx.Kind(kind);
    const double per_rank = static_cast<double>(micro_batch) / count;
    const int ep = static_cast<int>(std::min<int64_t>(count, m.experts));
    const double a2a = AllToAllSeconds(ctx, kind, per_rank * T * DispatchBytesPerToken(m), ep);
    layer[s] = k.cost->Attention(per_rank).Total() + k.cost->Expert(per_rank * T * m.top_k).Total() + 4 * a2a;
    head[s] = k.cost->Head(per_rank);
    handover[s] = s + 1 < K ? 2 * ctx.Link(kind, true).Seconds(per_rank * T * m.hidden * kActivationBytes, 1) : 0;
  }

  // Layer splits: every composition for up to three stages, else in
  // proportion to speed.
  std::vector<std::vector<int>> splits;
  if (K == 1) {
    splits.push_back({L});
  } else if (K == 2) {
    for (int a = 1; a < L; ++a) splits.push_back({a, L - a});
  } else if (K == 3) {
    for (int a = 1; a < L; ++a)
      for (int b = 1; a + b < L; ++b) splits.push_back({a, b, L - a - b});
  } else {
    double speed = 0;
    for (int s = 0; s < K; ++s) speed += 1.0 / layer[s];
    std::vector<int> split(K, 1);
    int given = K;
    for (int s = 0; s < K && given < L; ++s) {
      const int extra = std::min(L - given, static_cast<int>(std::floor((L - K) * (1.0 / layer[s]) / speed)));
      split[s] += extra;
      given += extra;
    }
    split[K - 1] += L - given;
    splits.push_back(split);
  }

  double best = std::numeric_limits<double>::infinity();
  std::string best_note, problem = "PP: no layer split fits in memory";
  for (const std::vector<int>& split : splits) {
    double slowest = 0, tail = 0;
    bool fits = true;
    for (int s = 0; s < K && fits; ++s) {
      const auto& [kind, count] = stages[s];
      const KindContext& k = ctx.Kind(kind);
      const double per_rank = static_cast<double>(micro_batch) / count;
      const bool ends = s == 0 || s == K - 1;  // embeddings on the first stage, LM head on the last
      const int ep = static_cast<int>(std::min<int64_t>(count, m.experts));
      const double need = EpRankBytes(m, T, per_rank, ep, split[s], ends, K - s);  // 1F1B: K - s in flight
      if (need > UsableBytes(k.gpu)) {
        fits = false;
        problem = "PP: a " + kind + " rank of a " + std::to_string(split[s]) + "-layer stage needs " + GiB(need) +
                  " of " + GiB(UsableBytes(k.gpu));
        break;
      }
      slowest = std::max(slowest, split[s] * layer[s] + (s == K - 1 ? head[s] : 0) + handover[s]);
      const double params = split[s] * m.AttentionParamsPerLayer() +
                            (ends ? static_cast<double>(m.vocab * m.hidden) : 0);
      const double experts_per_layer = std::ceil(static_cast<double>(m.experts) / ep);
      // DDP buckets hide the all-reduce behind the backward except the
      // stage's last layer (and its embeddings).
      const double exposed = m.AttentionParamsPerLayer() + (ends ? static_cast<double>(m.vocab * m.hidden) : 0);
      tail = std::max(tail, ctx.AllReduceSeconds(kind, kActivationBytes * exposed, count) +
                                ctx.AllReduceSeconds(kind, kActivationBytes * experts_per_layer * m.ExpertParams(),
                                                     std::max(1, count / ep)) +
                                k.cost->Optimizer(params + split[s] * experts_per_layer * m.ExpertParams()));
    }
    if (!fits) continue;
    const double step = static_cast<double>(micro_batches + K - 1) * slowest + tail;
    if (step < best) {
      best = step;
      std::ostringstream note;
      note << "PP over " << Describe(stages) << ", layers";
      for (int s = 0; s < K; ++s) note << (s ? "/" : " ") << split[s];
      note << ", " << micro_batches << " micro-batches of " << micro_batch << " sequences";
      best_note = note.str();
    }
  }
  if (!std::isfinite(best)) return Infeasible(problem);
  BaselinePrediction p;
  p.feasible = true;
  p.step_seconds = best;
  p.tokens_per_second = static_cast<double>(global_batch * T) / best;
  p.note = best_note;
  return p;
}

BaselinePrediction PredictDistEp(const PlanningContext& ctx, const std::vector<GroupClass>& classes,
                                 const DataParallelWorld& world, int64_t global_batch) {
  double step = 0;
  for (const GroupClass& c : classes) {
    GroupShape shape = c.shape;
    shape.offloaded.clear();
    try {
      const GroupEvaluation e = EvaluateGroup(ctx, shape, world, Schedule::kSequential, false, shape.micro_batches);
      step = std::max(step, e.step_seconds);
    } catch (const Error& e) {
      return Infeasible(std::string("DistEP (no Asym-EA): ") + e.what());
    }
  }
  if (step <= 0) return Infeasible("DistEP: no groups");
  BaselinePrediction p;
  p.feasible = true;
  p.step_seconds = step;
  p.tokens_per_second = static_cast<double>(global_batch * ctx.seq_len()) / step;
  p.note = "the plan's groups, sequential schedule, no Asym-EA";
  return p;
}

}  // namespace hetermoe::planner
