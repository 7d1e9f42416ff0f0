// HierMoE's expert swap forecast over a run (the planner's model of
// parallel.swap_every): from the routing counts a run logged per step
// (metrics.jsonl expert_tokens, [layer][expert]), the expert ranks' loads
// with the planned placement and with the swaps the engine would make.
//
// Counts say how many tokens chose each expert, not which experts a token
// chose together, so each step's routing is rebuilt with exactly those
// counts and its co-occurrences drawn at random (RoutingWithCounts, seeded).
// The routed rows per rank, and so the imbalance the engine reports
// (expert_load_imbalance, max / mean over the expert ranks), depend on the
// counts alone; the deduplicated rows each rank receives (the exchange) and
// the swap chosen also depend on the co-occurrences, which the forecast
// draws. Every swap_every steps, per layer, the best swap of that step's
// routing (BestSwap, as the engine) takes effect for the next step.
// Pure logic.
#pragma once

#include <cstdint>
#include <vector>

#include "planner/expert_swap.h"

namespace hetermoe::planner {

// A routing of counts[e] tokens to expert e, top_k distinct experts per
// token (sum(counts) must be a multiple of top_k and no count may exceed
// the token count). Throws hetermoe::Error otherwise.
LayerRouting RoutingWithCounts(const std::vector<int64_t>& counts, int64_t top_k, uint64_t seed);

// The engine's planned placement: experts split over `ranks` in contiguous
// ranges, the first (experts % ranks) ranks one more.
std::vector<int> ContiguousOwners(int64_t experts, int ranks);

struct SwapForecastLayer {
  double imbalance = 0;            // routed rows: max / mean over the ranks
  int64_t busiest_dedup_rows = 0;  // deduplicated rows the busiest rank receives (the exchange's critical path)
};

struct SwapForecastStep {
  std::vector<SwapForecastLayer> planned, swapped;  // [layer]
  int swaps = 0;                                    // made after this step
};

// counts[step][layer][expert]; swap_every 0 = never (swapped == planned).
std::vector<SwapForecastStep> ForecastSwaps(const std::vector<std::vector<std::vector<int64_t>>>& counts,
                                            int64_t top_k, int ranks, int swap_every, uint64_t seed = 1);

// What the plan prices from a run's routing (counts[layer][expert], one
// step's): per layer, the busiest expert rank's share of the routed rows
// (its experts' compute and the rows it is sent) and the deduplicated rows
// it receives per token (the exchange with parallel.dedup), with the
// planned placement or, with `swap`, the placement repeated swaps of that
// routing settle on (BestSwap until none lowers the score, as the engine
// would reach over steps of the same routing). Uniform routing over
// contiguous ranges gives ceil(E / N) / E and ReachProbability.
struct RoutingLoad {
  std::vector<double> busiest_routed_share;   // [layer]
  std::vector<double> busiest_dedup_per_token;  // [layer]
};
RoutingLoad LoadOfRouting(const std::vector<std::vector<int64_t>>& counts, int64_t top_k, int ranks, bool swap,
                          uint64_t seed = 1);

}  // namespace hetermoe::planner
