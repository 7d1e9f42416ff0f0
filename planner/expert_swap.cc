#include "planner/expert_swap.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "common/error.h"

namespace hetermoe::planner {
namespace {

void Check(const LayerRouting& routing, const std::vector<int>& owner, int ranks) {
  if (routing.top_k <= 0 || routing.chosen.size() % static_cast<size_t>(routing.top_k) != 0)
    throw Error("expert swap: " + std::to_string(routing.chosen.size()) + " choices are not tokens x top-" +
                std::to_string(routing.top_k));
  if (static_cast<int64_t>(owner.size()) != routing.experts)
    throw Error("expert swap: " + std::to_string(owner.size()) + " owners for " + std::to_string(routing.experts) +
                " experts");
  for (int r : owner)
    if (r < 0 || r >= ranks) throw Error("expert swap: owner rank " + std::to_string(r) + " outside [0, " +
                                         std::to_string(ranks) + ")");
  for (int32_t e : routing.chosen)
    if (e < 0 || e >= routing.experts) throw Error("expert swap: expert id " + std::to_string(e) + " out of range");
}

}  // namespace

double SmoothMax(const std::vector<int64_t>& rows, double g) {
  const int64_t mx = rows.empty() ? 0 : *std::max_element(rows.begin(), rows.end());
  if (mx <= 0) return 0;
  double sum = 0;
  for (int64_t x : rows) sum += std::pow(static_cast<double>(x) / static_cast<double>(mx), g);
  return static_cast<double>(mx) * std::pow(sum, 1.0 / g);
}

std::vector<int64_t> DeduplicatedRows(const LayerRouting& routing, const std::vector<int>& owner, int ranks) {
  Check(routing, owner, ranks);
  std::vector<int64_t> rows(static_cast<size_t>(ranks), 0);
  std::vector<int> seen;
  for (int64_t t = 0; t < routing.tokens(); ++t) {
    seen.clear();
    for (int64_t i = 0; i < routing.top_k; ++i) {
      const int r = owner[routing.chosen[t * routing.top_k + i]];
      if (std::find(seen.begin(), seen.end(), r) == seen.end()) seen.push_back(r);
    }
    for (int r : seen) ++rows[r];
  }
  return rows;
}

SwapChoice BestSwap(const LayerRouting& routing, const std::vector<int>& owner, int ranks, double g) {
  Check(routing, owner, ranks);
  const int64_t T = routing.tokens(), k = routing.top_k, E = routing.experts;
  // count[t * ranks + r]: token t's chosen experts on rank r; tokens_of[e]: who chose e.
  std::vector<int32_t> count(static_cast<size_t>(T * ranks), 0);
  std::vector<std::vector<int64_t>> tokens_of(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < k; ++i) {
      const int32_t e = routing.chosen[t * k + i];
      ++count[t * ranks + owner[e]];
      tokens_of[e].push_back(t);
    }
  SwapChoice best;
  best.rows_before = DeduplicatedRows(routing, owner, ranks);
  best.score_before = SmoothMax(best.rows_before, g);
  best.score_after = best.score_before;
  best.rows_after = best.rows_before;
  std::vector<char> chose_a(static_cast<size_t>(T), 0);
  std::vector<int64_t> rows = best.rows_before;
  for (int32_t a = 0; a < E; ++a) {
    for (int64_t t : tokens_of[a]) chose_a[t] = 1;
    for (int32_t b = a + 1; b < E; ++b) {
      const int ra = owner[a], rb = owner[b];
      if (ra == rb) continue;
      // a moves to rb, b to ra. Tokens that chose both keep their counts.
      int64_t da = 0, db = 0;  // change of rows on ra, rb
      std::vector<char>& both = chose_a;  // chose_a[t] == 2: chose b too (marked below, reset after)
      for (int64_t t : tokens_of[b])
        if (both[t]) both[t] = 2;
      for (int64_t t : tokens_of[a]) {
        if (both[t] == 2) continue;
        da -= count[t * ranks + ra] == 1;  // its only expert on ra leaves
        db += count[t * ranks + rb] == 0;  // and arrives on rb
      }
      for (int64_t t : tokens_of[b]) {
        if (both[t] == 2) continue;
        db -= count[t * ranks + rb] == 1;
        da += count[t * ranks + ra] == 0;
      }
      for (int64_t t : tokens_of[b])
        if (both[t] == 2) both[t] = 1;
      rows[ra] += da;
      rows[rb] += db;
      const double score = SmoothMax(rows, g);
      if (score < best.score_after - 1e-9 * best.score_before) {
        best.a = a;
        best.b = b;
        best.score_after = score;
        best.rows_after = rows;
      }
      rows[ra] -= da;
      rows[rb] -= db;
    }
    for (int64_t t : tokens_of[a]) chose_a[t] = 0;
  }
  return best;
}

}  // namespace hetermoe::planner
