#include "planner/expert_swap.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <unordered_map>

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

SwapTable MakeSwapTable(const std::vector<std::vector<int64_t>>& tokens_of, const std::vector<int>& owner,
                        int ranks) {
  const int64_t E = static_cast<int64_t>(owner.size());
  if (static_cast<int64_t>(tokens_of.size()) != E)
    throw Error("expert swap: token lists for " + std::to_string(tokens_of.size()) + " experts, owners for " +
                std::to_string(E));
  for (int r : owner)
    if (r < 0 || r >= ranks) throw Error("expert swap: owner rank " + std::to_string(r) + " outside [0, " +
                                         std::to_string(ranks) + ")");
  // Dense token numbers: count[t * ranks + r] = token t's chosen experts on rank r.
  std::unordered_map<int64_t, int64_t> number;
  std::vector<std::vector<int64_t>> tokens(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e)
    for (int64_t id : tokens_of[e]) tokens[e].push_back(number.try_emplace(id, number.size()).first->second);
  const int64_t T = static_cast<int64_t>(number.size());
  std::vector<int32_t> count(static_cast<size_t>(T * ranks), 0);
  for (int64_t e = 0; e < E; ++e)
    for (int64_t t : tokens[e]) ++count[t * ranks + owner[e]];
  SwapTable table;
  table.experts = E;
  table.ranks = ranks;
  table.rows.assign(static_cast<size_t>(ranks), 0);
  for (int64_t t = 0; t < T; ++t)
    for (int r = 0; r < ranks; ++r) table.rows[r] += count[t * ranks + r] > 0;
  table.routed.assign(static_cast<size_t>(E), 0);
  for (int64_t e = 0; e < E; ++e) table.routed[e] = static_cast<double>(tokens[e].size());
  table.delta.assign(static_cast<size_t>(E * E * 2), 0);
  std::vector<char> mark(static_cast<size_t>(T), 0);  // 1: chose a; 2: chose a and b
  for (int64_t a = 0; a < E; ++a) {
    for (int64_t t : tokens[a]) mark[t] = 1;
    for (int64_t b = a + 1; b < E; ++b) {
      const int ra = owner[a], rb = owner[b];
      if (ra == rb) continue;
      // a moves to rb, b to ra; tokens that chose both keep their counts.
      for (int64_t t : tokens[b])
        if (mark[t]) mark[t] = 2;
      double da = 0, db = 0;
      for (int64_t t : tokens[a]) {
        if (mark[t] == 2) continue;
        da -= count[t * ranks + ra] == 1;  // its only expert on ra leaves
        db += count[t * ranks + rb] == 0;  // and arrives on rb
      }
      for (int64_t t : tokens[b]) {
        if (mark[t] == 2) continue;
        db -= count[t * ranks + rb] == 1;
        da += count[t * ranks + ra] == 0;
      }
      for (int64_t t : tokens[b])
        if (mark[t] == 2) mark[t] = 1;
      table.delta[(a * E + b) * 2] = da;
      table.delta[(a * E + b) * 2 + 1] = db;
    }
    for (int64_t t : tokens[a]) mark[t] = 0;
  }
  return table;
}

SwapChoice ChooseSwap(const SwapTable& table, const std::vector<int>& owner, double g) {
  const int64_t E = table.experts;
  SwapChoice best;
  for (double x : table.rows) best.rows_before.push_back(static_cast<int64_t>(std::llround(x)));
  for (int64_t e = 0; e < E; ++e) best.rows_before[owner[e]] += static_cast<int64_t>(std::llround(table.routed[e]));
  best.score_before = SmoothMax(best.rows_before, g);
  best.score_after = best.score_before;
  best.rows_after = best.rows_before;
  std::vector<int64_t> rows = best.rows_before;
  for (int64_t a = 0; a < E; ++a)
    for (int64_t b = a + 1; b < E; ++b) {
      const int ra = owner[a], rb = owner[b];
      if (ra == rb) continue;
      // Deduplicated rows as the table says; routed rows move with the experts.
      const auto moved = static_cast<int64_t>(std::llround(table.routed[b] - table.routed[a]));
      const auto da = static_cast<int64_t>(std::llround(table.delta[(a * E + b) * 2])) + moved;
      const auto db = static_cast<int64_t>(std::llround(table.delta[(a * E + b) * 2 + 1])) - moved;
      rows[ra] += da;
      rows[rb] += db;
      const double score = SmoothMax(rows, g);
      if (score < best.score_after - 1e-9 * best.score_before) {
        best.a = static_cast<int>(a);
        best.b = static_cast<int>(b);
        best.score_after = score;
        best.rows_after = rows;
      }
      rows[ra] -= da;
      rows[rb] -= db;
    }
  return best;
}

std::vector<int64_t> RankLoads(const LayerRouting& routing, const std::vector<int>& owner, int ranks) {
  std::vector<int64_t> load = DeduplicatedRows(routing, owner, ranks);
  for (int32_t e : routing.chosen) ++load[owner[e]];
  return load;
}

SwapChoice BestSwap(const LayerRouting& routing, const std::vector<int>& owner, int ranks, double g) {
  Check(routing, owner, ranks);
  std::vector<std::vector<int64_t>> tokens_of(static_cast<size_t>(routing.experts));
  for (int64_t t = 0; t < routing.tokens(); ++t)
    for (int64_t i = 0; i < routing.top_k; ++i) tokens_of[routing.chosen[t * routing.top_k + i]].push_back(t);
  return ChooseSwap(MakeSwapTable(tokens_of, owner, ranks), owner, g);
}

}  // namespace hetermoe::planner
