// HierMoE's expert swap, the decision (algorithms.md section 2): from one
// layer's routing (each token's k experts) and where the experts live, each
// owner rank's load, and the swap of two experts on different ranks that
// most lowers the busiest rank's load, scored by a smooth max (max *
// (sum_i (x_i / max)^g)^(1/g), g = 10: the busiest rank dominates, the next
// ones break ties).
//
// A rank's load counts the rows it receives once deduplicated (a token goes
// to a rank once however many of its experts the rank holds: HierMoE's
// exchange) plus the rows its experts compute (one per routed (token,
// expert) pair), a row sent and a row computed alike. HierMoE scores the
// exchange alone; on HeterMoE's expert ranks, older GPUs whose expert
// compute the zebra schedule waits for, co-locating experts that share
// tokens (which the exchange alone rewards) can pile the compute onto one
// rank: measured on bench_expert_swap, the exchange-only score raised the
// routed load's max/mean from 2.26 to 2.76 and slowed the step 11%.
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
  std::vector<int64_t> rows_before, rows_after;  // load per rank: deduplicated rows received + routed rows
};

// What the choice needs, additive over disjoint sets of tokens (so ranks
// that each routed some of a step's tokens sum theirs, every part of it):
// the deduplicated rows per rank, the routed rows per expert, and for every
// pair a < b of experts on different ranks the change a swap would make to
// the deduplicated rows of a's rank and of b's rank.
struct SwapTable {
  int64_t experts = 0;
  int ranks = 0;
  std::vector<double> rows;    // [ranks] deduplicated rows received
  std::vector<double> routed;  // [experts] rows routed to each expert
  std::vector<double> delta;   // [(a * experts + b) * 2 + {0: a's rank, 1: b's rank}], a < b: change of rows
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
// Each rank's load: DeduplicatedRows + the rows routed to its experts.
std::vector<int64_t> RankLoads(const LayerRouting& routing, const std::vector<int>& owner, int ranks);
// The best swap (lowest smooth max after it), if it lowers the score:
// ChooseSwap(MakeSwapTable(the routing's tokens per expert)).
SwapChoice BestSwap(const LayerRouting& routing, const std::vector<int>& owner, int ranks, double g = 10);

}  // namespace hetermoe::planner
