// The shape search (see search.h).
#include "planner/search.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/error.h"

namespace hetermoe::planner {
namespace {

std::vector<int64_t> Divisors(int64_t x) {
  std::vector<int64_t> out;
  for (int64_t d = 1; d * d <= x; ++d) {
    if (x % d != 0) continue;
    out.push_back(d);
    if (d != x / d) out.push_back(x / d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Role pairs (attention, expert): every ordered pair of kinds or pools with
// no kind in common, and each kind with at least 2 GPUs in both roles.
std::vector<std::pair<std::string, std::string>> KindPairs(const PlanningContext& ctx) {
  auto disjoint = [&](const std::string& a, const std::string& e) {
    for (const std::string& x : ctx.Kind(a).members) {
      for (const std::string& y : ctx.Kind(e).members) {
        if (x == y) return false;
      }
    }
    return true;
  };
  std::vector<std::pair<std::string, std::string>> pairs;
  for (const std::string& a : ctx.RoleKinds()) {
    for (const std::string& e : ctx.RoleKinds()) {
      const bool shared = a == e && ctx.Kind(a).members.size() == 1 && ctx.Kind(a).count >= 2;
      if (shared || disjoint(a, e)) pairs.push_back({a, e});
    }
  }
  return pairs;
}

int Gpus(const GroupShape& s) { return s.Gpus(); }

// The largest S (1..cap) at which `shape` fits in memory at some R, 0 if none;
// fitting is taken to shrink with S (activations grow with it).
int LargestFittingS(const PlanningContext& ctx, GroupShape shape, bool allow_asym_ea, int max_micro_batches,
                    int cap) {
  auto fits = [&](int s) {
    shape.sequences_per_attention_rank = s;
    return FitsInMemory(ctx, shape, allow_asym_ea, max_micro_batches);
  };
  if (cap < 1 || !fits(1)) return 0;
  int lo = 1, hi = cap;
  if (fits(hi)) return hi;
  while (hi - lo > 1) {
    const int mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  return lo;
}

}  // namespace

double StepLowerBound(const PlanningContext& ctx, const GroupShape& shape, bool allow_asym_ea) {
  const ModelShape& m = ctx.model();
  const KindContext& a = ctx.Kind(shape.attention_gpu);
  const KindContext& e = ctx.Kind(shape.expert_gpu);
  const int M = shape.attention_ranks, N = shape.expert_ranks;
  const double S = shape.sequences_per_attention_rank;
  const double L = static_cast<double>(m.layers), n = static_cast<double>(m.experts);
  // Token-expert assignments one expert gets over the step (all micro-batches).
  const double tokens = M * S * static_cast<double>(ctx.seq_len() * m.top_k) / n;
  const double expert_params = m.ExpertParams();
  const double attention_rank =
      L * a.cost->Attention(S).Total() + a.cost->Head(S) + a.cost->Optimizer(m.ExpertlessParams());
  const double on_expert_rank = e.cost->Expert(tokens).Total() + e.cost->Optimizer(expert_params);
  if (!allow_asym_ea || !AsymEaShapeOk(M, N)) {
    return std::max(attention_rank, L * std::ceil(n / N) * on_expert_rank);
  }
  // Asym-EA moves x of the L*n experts to the attention ranks: the best
  // balance, experts divisible, is min over x of
  // max(attention_rank + x/M * on_attention_rank, (L*n - x)/N * on_expert_rank).
  const double on_attention_rank = a.cost->Expert(tokens).Total() + a.cost->Optimizer(expert_params);
  const double all_on_expert_ranks = L * n / N * on_expert_rank;
  if (attention_rank >= all_on_expert_ranks) return attention_rank;
  const double x = (all_on_expert_ranks - attention_rank) / (on_attention_rank / M + on_expert_rank / N);
  return attention_rank + x / M * on_attention_rank;
}

std::vector<ShapeCandidate> EnumerateShapes(const PlanningContext& ctx, const PlanRequest& request) {
  const int64_t G = request.global_batch;
  const int n = static_cast<int>(ctx.model().experts);
  const std::vector<int64_t> divisors = Divisors(G);
  std::vector<ShapeCandidate> out;
  for (const auto& [a, e] : KindPairs(ctx)) {
    const bool shared = a == e;
    const int a_count = ctx.Kind(a).count, e_count = ctx.Kind(e).count;
    const int max_m = std::min({shared ? a_count - 1 : a_count, kMaxAttentionRanks});
    for (int M = 1; M <= max_m; ++M) {
      if (G % M != 0) continue;
      const int max_n = std::min(shared ? a_count - M : e_count, n);
      for (int N = 1; N <= max_n; ++N) {
        for (int64_t rows : divisors) {  // rows = groups x M attention ranks
          if (rows % M != 0) continue;
          const int64_t g = rows / M;
          const bool fits = shared ? g * (M + N) <= a_count : g * M <= a_count && g * N <= e_count;
          if (!fits) break;  // rows ascend
          if (request.gpu_budget > 0 && g * (M + N) > request.gpu_budget) break;
          if ((request.attention_ranks > 0 && M != request.attention_ranks) ||
              (request.expert_ranks > 0 && N != request.expert_ranks) || (request.groups > 0 && g != request.groups))
            continue;
          ShapeCandidate c;
          c.shape.attention_gpu = a;
          c.shape.expert_gpu = e;
          c.shape.attention_ranks = M;
          c.shape.expert_ranks = N;
          c.shape.groups = static_cast<int>(g);
          c.shape.sequences_per_attention_rank = static_cast<int>(G / rows);
          c.lower_bound = StepLowerBound(ctx, c.shape, request.asym_ea);
          out.push_back(std::move(c));
        }
      }
    }
  }
  return out;
}

bool BetterEvaluation(const GroupEvaluation& x, const GroupEvaluation& y) {
  if (x.step_seconds < y.step_seconds * (1 - 1e-9)) return true;
  if (y.step_seconds < x.step_seconds * (1 - 1e-9)) return false;
  return Gpus(x.shape) < Gpus(y.shape);
}

SearchResult SearchShapes(const PlanningContext& ctx, const PlanRequest& request, SearchMode mode) {
  const std::vector<ShapeCandidate> candidates = EnumerateShapes(ctx, request);
  std::vector<size_t> order(candidates.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) {
    const ShapeCandidate &cx = candidates[x], &cy = candidates[y];
    if (cx.lower_bound != cy.lower_bound) return cx.lower_bound < cy.lower_bound;
    return Gpus(cx.shape) < Gpus(cy.shape);
  });

  // Branch and bound keeps pricing until the runner-up is known exactly too.
  constexpr size_t kExact = 2;
  SearchResult result;
  result.enumerated = static_cast<int>(candidates.size());
  std::vector<double> best_steps;  // the kExact fastest so far, ascending
  for (size_t i : order) {
    const ShapeCandidate& c = candidates[i];
    if (mode == SearchMode::kBranchAndBound && best_steps.size() == kExact &&
        c.lower_bound >= best_steps.back() * (1 - 1e-9)) {
      break;
    }
    const DataParallelWorld world{c.shape.groups * c.shape.attention_ranks, c.shape.groups};
    ++result.priced;
    try {
      GroupEvaluation eval =
          EvaluateGroup(ctx, c.shape, world, Schedule::kZebra, request.asym_ea, request.max_micro_batches);
      best_steps.push_back(eval.step_seconds);
      std::sort(best_steps.begin(), best_steps.end());
      if (best_steps.size() > kExact) best_steps.pop_back();
      result.fitting.push_back(std::move(eval));
    } catch (const Error& e) {
      result.refused.push_back({c.shape, e.what()});
    }
  }
  std::stable_sort(result.fitting.begin(), result.fitting.end(), BetterEvaluation);
  return result;
}

std::string WhatWouldFit(const PlanningContext& ctx, const PlanRequest& request) {
  const int64_t G = request.global_batch;
  const int cap = static_cast<int>(std::min<int64_t>(G, 1 << 20));
  int64_t most = 0;
  GroupShape most_shape;
  int fewest_gpus = 0;
  GroupShape fewest_shape;
  for (const auto& [a, e] : KindPairs(ctx)) {
    const bool shared = a == e;
    const int a_count = ctx.Kind(a).count, e_count = ctx.Kind(e).count;
    const int n = static_cast<int>(ctx.model().experts);
    for (int M = 1; M <= std::min<int64_t>(kMaxAttentionRanks, G); ++M) {
      for (int N = 1; N <= n; ++N) {
        GroupShape shape;
        shape.attention_gpu = a;
        shape.expert_gpu = e;
        shape.attention_ranks = M;
        shape.expert_ranks = N;
        // Memory does not depend on the number of groups.
        const int s_max = LargestFittingS(ctx, shape, request.asym_ea, request.max_micro_batches, cap);
        if (s_max == 0) continue;
        // This inventory: as many groups as fit, as many sequences as fit.
        const int g_here = shared ? a_count / (M + N) : std::min(a_count / M, e_count / N);
        if (g_here >= 1 && static_cast<int64_t>(g_here) * M * s_max > most) {
          most = static_cast<int64_t>(g_here) * M * s_max;
          most_shape = shape;
          most_shape.groups = g_here;
          most_shape.sequences_per_attention_rank = s_max;
        }
        // The requested batch: the fewest groups of this shape that take it.
        if (G % M != 0) continue;
        for (int64_t rows : Divisors(G)) {
          if (rows % M != 0 || G / rows > s_max) continue;
          const int g = static_cast<int>(rows / M);
          if (fewest_gpus == 0 || g * (M + N) < fewest_gpus) {
            fewest_gpus = g * (M + N);
            fewest_shape = shape;
            fewest_shape.groups = g;
            fewest_shape.sequences_per_attention_rank = static_cast<int>(G / rows);
          }
          break;
        }
      }
    }
  }
  std::string out;
  if (most > 0 && most < G) {
    out = "at most " + std::to_string(most) + " sequences per step fit on this inventory (lower --global-batch or " +
          "--seq-len; e.g. " + ShapeText(most_shape) + " with " +
          std::to_string(most_shape.sequences_per_attention_rank) + " per attention rank)";
  }
  if (fewest_gpus > 0) {
    const GroupShape& f = fewest_shape;
    const std::string gpus =
        f.SameKind() ? std::to_string(fewest_gpus) + " " + f.attention_gpu
                     : std::to_string(f.groups * f.attention_ranks) + " " + f.attention_gpu + " + " +
                           std::to_string(f.groups * f.expert_ranks) + " " + f.expert_gpu;
    out += std::string(out.empty() ? "" : "; ") + "this batch needs " + gpus + " (" + ShapeText(f) + " with " +
           std::to_string(f.sequences_per_attention_rank) + " sequences per attention rank)";
  }
  return out;
}

}  // namespace hetermoe::planner
