// HierMoE's expert swap, the decision (algorithms.md section 2): from one
// layer's routing (each token's k experts) and where the experts live, the
// rows each owner rank receives once deduplicated (a token goes to a rank
// once however many of its experts the rank holds), and the swap of two
// experts on different ranks that most lowers the busiest rank's rows,
// scored by a smooth max (max * (sum_i (x_i / max)^g)^(1/g), g = 10: the
// busiest rank dominates, the next ones break ties).
//
// Pure logic. Every pair is priced incrementally from per-token counts of
// chosen experts per rank: a swap of a and b changes only the tokens that
// chose exactly one of them, so all pairs cost O(T k E) instead of
// re-deduplicating the layer for each of the E^2 pairs. A swap moves one
// expert each way, so every rank keeps its expert count (and memory).
#pragma once

#include <cstdint>
#include <vector>

namespace hetermoe::planner {

struct LayerRouting {
  int64_t experts = 0;
  int64_t top_k = 0;
  std::vector<int32_t> chosen;  // tokens x top_k expert ids, distinct per token
  int64_t tokens() const { return top_k > 0 ? static_cast<int64_t>(chosen.size()) / top_k : 0; }
};

struct SwapChoice {
  int a = -1, b = -1;             // the experts to swap; -1: no swap lowers the score
  double score_before = 0, score_after = 0;
  std::vector<int64_t> rows_before, rows_after;  // deduplicated rows per rank
};

// What the choice needs, additive over disjoint sets of tokens (so ranks
// that each routed some of a step's tokens sum theirs): the deduplicated
// rows per rank, and for every pair a < b of experts on different ranks the
// change a swap would make to the rows of a's rank and of b's rank.
struct SwapTable {
  int64_t experts = 0;
  int ranks = 0;
  std::vector<double> rows;   // [ranks]
  std::vector<double> delta;  // [(a * experts + b) * 2 + {0: a's rank, 1: b's rank}], a < b
};
// tokens_of[e]: the (any) ids of the tokens that chose expert e; a token's
// experts are distinct.
SwapTable MakeSwapTable(const std::vector<std::vector<int64_t>>& tokens_of, const std::vector<int>& owner, int ranks);
// The swap with the lowest smooth max after it, if it lowers the score.
SwapChoice ChooseSwap(const SwapTable& table, const std::vector<int>& owner, double g = 10);

// max * (sum (x / max)^g)^(1/g); 0 for all zeros.
double SmoothMax(const std::vector<int64_t>& rows, double g = 10);
// Deduplicated rows each rank receives: tokens with at least one expert
// on it. owner[e] = the rank holding expert e, in [0, ranks).
std::vector<int64_t> DeduplicatedRows(const LayerRouting& routing, const std::vector<int>& owner, int ranks);
// The best swap (lowest smooth max after it), if it lowers the score:
// ChooseSwap(MakeSwapTable(the routing's tokens per expert)).
SwapChoice BestSwap(const LayerRouting& routing, const std::vector<int>& owner, int ranks, double g = 10);

}  // namespace hetermoe::planner
