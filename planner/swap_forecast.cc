// The expert swap forecast (see swap_forecast.h).
#include "planner/swap_forecast.h"

#include <algorithm>
#include <numeric>
#include <random>
#include <string>

#include "common/error.h"

namespace hetermoe::planner {

LayerRouting RoutingWithCounts(const std::vector<int64_t>& counts, int64_t top_k, uint64_t seed) {
  if (top_k <= 0) throw Error("swap forecast: top_k must be > 0");
  const int64_t rows = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  if (rows % top_k != 0)
    throw Error("swap forecast: " + std::to_string(rows) + " routed rows is not a multiple of top_k " +
                std::to_string(top_k));
  const int64_t tokens = rows / top_k;
  for (int64_t c : counts)
    if (c < 0 || c > tokens)
      throw Error("swap forecast: an expert count of " + std::to_string(c) + " with " + std::to_string(tokens) +
                  " tokens");
  // Token by token: the experts that need every remaining token are taken
  // (so no count is left unplaceable), the rest drawn in proportion to the
  // rows each still needs, without repeats.
  std::mt19937_64 rng(seed);
  std::vector<int64_t> left = counts;
  LayerRouting r;
  r.experts = static_cast<int64_t>(counts.size());
  r.top_k = top_k;
  r.chosen.reserve(rows);
  std::vector<char> taken(counts.size());
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t remaining = tokens - t;
    std::fill(taken.begin(), taken.end(), 0);
    int64_t picked = 0;
    for (size_t e = 0; e < left.size(); ++e)
      if (left[e] == remaining) {
        taken[e] = 1;
        ++picked;
      }
    while (picked < top_k) {
      double total = 0;
      for (size_t e = 0; e < left.size(); ++e)
        if (!taken[e]) total += static_cast<double>(left[e]);
      double x = std::uniform_real_distribution<double>(0.0, total)(rng);
      size_t e = 0;
      for (; e + 1 < left.size(); ++e) {
        if (taken[e] || left[e] == 0) continue;
        if (x < static_cast<double>(left[e])) break;
        x -= static_cast<double>(left[e]);
      }
      while (taken[e] || left[e] == 0) --e;  // rounding past the end: the last expert still needing rows
      taken[e] = 1;
      ++picked;
    }
    for (size_t e = 0; e < left.size(); ++e)
      if (taken[e]) {
        r.chosen.push_back(static_cast<int32_t>(e));
        --left[e];
      }
  }
  return r;
}

std::vector<int> ContiguousOwners(int64_t experts, int ranks) {
  if (ranks <= 0 || experts < ranks) throw Error("swap forecast: " + std::to_string(experts) +
                                                 " experts cannot be split over " + std::to_string(ranks) + " ranks");
  std::vector<int> owner;
  for (int r = 0; r < ranks; ++r) {
    const int64_t held = experts / ranks + (r < experts % ranks ? 1 : 0);
    owner.insert(owner.end(), held, r);
  }
  return owner;
}

namespace {

SwapForecastLayer LayerLoad(const LayerRouting& routing, const std::vector<int64_t>& counts,
                            const std::vector<int>& owner, int ranks) {
  std::vector<double> routed(ranks, 0.0);
  for (size_t e = 0; e < counts.size(); ++e) routed[owner[e]] += static_cast<double>(counts[e]);
  const double mean = std::accumulate(routed.begin(), routed.end(), 0.0) / ranks;
  SwapForecastLayer out;
  out.imbalance = mean > 0 ? *std::max_element(routed.begin(), routed.end()) / mean : 0.0;
  const std::vector<int64_t> dedup = DeduplicatedRows(routing, owner, ranks);
  out.busiest_dedup_rows = *std::max_element(dedup.begin(), dedup.end());
  return out;
}

}  // namespace

std::vector<SwapForecastStep> ForecastSwaps(const std::vector<std::vector<std::vector<int64_t>>>& counts,
                                            int64_t top_k, int ranks, int swap_every, uint64_t seed) {
  std::vector<SwapForecastStep> steps;
  if (counts.empty()) return steps;
  const size_t layers = counts[0].size();
  std::vector<std::vector<int>> owner;
  const std::vector<int> planned = ContiguousOwners(layers ? static_cast<int64_t>(counts[0][0].size()) : 0, ranks);
  owner.assign(layers, planned);
  for (size_t s = 0; s < counts.size(); ++s) {
    if (counts[s].size() != layers) throw Error("swap forecast: step " + std::to_string(s + 1) + " has another layer count");
    SwapForecastStep step;
    const bool due = swap_every > 0 && (s + 1) % swap_every == 0;
    for (size_t l = 0; l < layers; ++l) {
      if (counts[s][l].size() != planned.size())
        throw Error("swap forecast: step " + std::to_string(s + 1) + " layer " + std::to_string(l) +
                    " has another expert count");
      const LayerRouting routing = RoutingWithCounts(counts[s][l], top_k, seed + s * layers + l);
      step.planned.push_back(LayerLoad(routing, counts[s][l], planned, ranks));
      step.swapped.push_back(LayerLoad(routing, counts[s][l], owner[l], ranks));
      if (!due) continue;
      const SwapChoice c = BestSwap(routing, owner[l], ranks);
      if (c.a < 0) continue;
      std::swap(owner[l][c.a], owner[l][c.b]);
      ++step.swaps;
    }
    steps.push_back(std::move(step));
  }
  return steps;
}

RoutingLoad LoadOfRouting(const std::vector<std::vector<int64_t>>& counts, int64_t top_k, int ranks, bool swap,
                          uint64_t seed) {
  RoutingLoad load;
  for (size_t l = 0; l < counts.size(); ++l) {
    const LayerRouting routing = RoutingWithCounts(counts[l], top_k, seed + l);
    std::vector<int> owner = ContiguousOwners(static_cast<int64_t>(counts[l].size()), ranks);
    // Each swap lowers the smooth max, so this ends; the cap only bounds the work.
    for (int64_t swaps = 0; swap && swaps < routing.experts * routing.experts; ++swaps) {
      const SwapChoice c = BestSwap(routing, owner, ranks);
      if (c.a < 0) break;
      std::swap(owner[c.a], owner[c.b]);
    }
    std::vector<double> routed(ranks, 0.0);
    double total = 0;
    for (size_t e = 0; e < counts[l].size(); ++e) {
      routed[owner[e]] += static_cast<double>(counts[l][e]);
      total += static_cast<double>(counts[l][e]);
    }
    const std::vector<int64_t> dedup = DeduplicatedRows(routing, owner, ranks);
    load.busiest_routed_share.push_back(total > 0 ? *std::max_element(routed.begin(), routed.end()) / total : 0.0);
    load.busiest_dedup_per_token.push_back(
        routing.tokens() > 0
            ? static_cast<double>(*std::max_element(dedup.begin(), dedup.end())) / static_cast<double>(routing.tokens())
            : 0.0);
  }
  return load;
}

}  // namespace hetermoe::planner
