// HierMoE's expert swap decision (planner/expert_swap.h) against brute force
// (re-counting the ranks' loads for every pair), and on a skewed router.
#include "planner/expert_swap.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>

#include "common/error.h"

namespace hetermoe::planner {
namespace {

// Tokens choosing k distinct experts, expert e drawn with weight weights[e].
LayerRouting Route(int64_t experts, int64_t k, int64_t tokens, const std::vector<double>& weights, uint64_t seed) {
  std::mt19937_64 rng(seed);
  LayerRouting r{experts, k, {}};
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<double> w = weights;
    for (int64_t i = 0; i < k; ++i) {
      std::discrete_distribution<int> pick(w.begin(), w.end());
      const int e = pick(rng);
      r.chosen.push_back(e);
      w[e] = 0;  // distinct
    }
  }
  return r;
}

std::vector<int> Contiguous(int64_t experts, int ranks) {
  std::vector<int> owner(static_cast<size_t>(experts));
  for (int64_t e = 0; e < experts; ++e) owner[e] = static_cast<int>(e * ranks / experts);
  return owner;
}

TEST(ExpertSwap, BestSwapEqualsBruteForce) {
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    const int64_t E = 12, k = 1 + static_cast<int64_t>(seed % 4);
    const int ranks = 3 + static_cast<int>(seed % 2);
    std::vector<double> weights(E);
    std::mt19937_64 rng(seed);
    for (double& w : weights) w = 0.2 + std::uniform_real_distribution<double>(0, 1)(rng);
    const LayerRouting routing = Route(E, k, 300, weights, seed);
    const std::vector<int> owner = Contiguous(E, ranks);
    const SwapChoice got = BestSwap(routing, owner, ranks);
    EXPECT_EQ(got.rows_before, RankLoads(routing, owner, ranks));
    double best = SmoothMax(got.rows_before);
    for (int a = 0; a < E; ++a)
      for (int b = a + 1; b < E; ++b) {
        if (owner[a] == owner[b]) continue;
        std::vector<int> swapped = owner;
        std::swap(swapped[a], swapped[b]);
        best = std::min(best, SmoothMax(RankLoads(routing, swapped, ranks)));
      }
    EXPECT_NEAR(got.score_after, best, 1e-9 * best) << "seed " << seed;
    if (got.a >= 0) {
      std::vector<int> swapped = owner;
      std::swap(swapped[got.a], swapped[got.b]);
      EXPECT_EQ(got.rows_after, RankLoads(routing, swapped, ranks)) << "seed " << seed;
      EXPECT_LT(got.score_after, got.score_before);
    } else {
      EXPECT_EQ(got.score_after, got.score_before);
    }
  }
}

// A skewed router: experts 0-3 hot (on rank 0 when placed contiguously).
// Swapping, one pair at a time as the engine would every K steps, spreads
// them: the busiest rank's deduplicated rows and the max / mean fall.
TEST(ExpertSwap, SwapsSpreadHotExpertsAndLowerTheBusiestRank) {
  const int64_t E = 16, k = 2;
  const int ranks = 4;
  std::vector<double> weights(E, 1.0);
  for (int e = 0; e < 4; ++e) weights[e] = 6.0;
  const LayerRouting routing = Route(E, k, 4000, weights, 11);
  std::vector<int> owner = Contiguous(E, ranks);
  auto imbalance = [&](const std::vector<int64_t>& rows) {
    return static_cast<double>(*std::max_element(rows.begin(), rows.end())) * ranks /
           static_cast<double>(std::accumulate(rows.begin(), rows.end(), int64_t{0}));
  };
  const std::vector<int64_t> start = DeduplicatedRows(routing, owner, ranks);
  int swaps = 0;
  for (; swaps < 8; ++swaps) {
    const SwapChoice c = BestSwap(routing, owner, ranks);
    if (c.a < 0) break;
    std::swap(owner[c.a], owner[c.b]);
  }
  const std::vector<int64_t> end = DeduplicatedRows(routing, owner, ranks);
  std::printf("skewed router, 16 experts (4 hot) on 4 ranks, top-2: busiest rank %lld -> %lld rows, "
              "max/mean %.3f -> %.3f after %d swaps\n",
              static_cast<long long>(*std::max_element(start.begin(), start.end())),
              static_cast<long long>(*std::max_element(end.begin(), end.end())), imbalance(start), imbalance(end),
              swaps);
  EXPECT_GT(imbalance(start), 1.5);
  EXPECT_LT(imbalance(end), 1.1);
  std::vector<int> hot_ranks;
  for (int e = 0; e < 4; ++e) hot_ranks.push_back(owner[e]);
  std::sort(hot_ranks.begin(), hot_ranks.end());
  EXPECT_EQ(std::unique(hot_ranks.begin(), hot_ranks.end()) - hot_ranks.begin(), 4) << "one hot expert per rank";
  for (int r = 0; r < ranks; ++r) EXPECT_EQ(std::count(owner.begin(), owner.end(), r), 4) << "experts per rank kept";
}

TEST(ExpertSwap, BadRoutingIsAnError) {
  EXPECT_THROW(BestSwap({4, 2, {0, 1, 2}}, {0, 0, 1, 1}, 2), hetermoe::Error);
  EXPECT_THROW(BestSwap({4, 2, {0, 5}}, {0, 0, 1, 1}, 2), hetermoe::Error);
  EXPECT_THROW(BestSwap({4, 2, {0, 1}}, {0, 0, 1, 2}, 2), hetermoe::Error);
  EXPECT_EQ(DeduplicatedRows({4, 2, {0, 1, 0, 1}}, {0, 0, 1, 1}, 2), (std::vector<int64_t>{2, 0}));
  EXPECT_EQ(BestSwap({4, 2, {0, 1, 0, 1}}, {0, 0, 1, 1}, 2).rows_before, (std::vector<int64_t>{6, 0}))
      << "2 tokens received once, 4 rows computed";
}

}  // namespace
}  // namespace hetermoe::planner
