// The expert swap forecast (planner/swap_forecast.h): routings rebuilt from
// counts keep the counts exactly, the planned placement's imbalance follows
// from the counts alone, and swaps even a skewed router's load out.
#include "planner/swap_forecast.h"

#include <gtest/gtest.h>

#include <set>
#include <vector>

#include "common/error.h"

namespace hetermoe::planner {
namespace {

TEST(SwapForecast, RoutingsKeepTheCountsWithDistinctExpertsPerToken) {
  const std::vector<int64_t> counts = {100, 100, 37, 3, 60, 0, 50, 50};  // 400 rows, top-2: 200 tokens
  for (uint64_t seed : {1u, 2u, 3u}) {
    const LayerRouting r = RoutingWithCounts(counts, 2, seed);
    ASSERT_EQ(r.tokens(), 200);
    std::vector<int64_t> got(counts.size(), 0);
    for (int64_t t = 0; t < r.tokens(); ++t) {
      const std::set<int32_t> experts(r.chosen.begin() + t * 2, r.chosen.begin() + t * 2 + 2);
      EXPECT_EQ(experts.size(), 2u) << "token " << t;
      for (int32_t e : experts) ++got[e];
    }
    EXPECT_EQ(got, counts);
  }
  // Experts 0 and 1 need every token: every token has both.
  const LayerRouting both = RoutingWithCounts({3, 3, 0}, 2, 1);
  for (int64_t t = 0; t < 3; ++t) EXPECT_EQ(std::set<int32_t>(both.chosen.begin() + 2 * t, both.chosen.begin() + 2 * t + 2),
                                            (std::set<int32_t>{0, 1}));
  EXPECT_THROW(RoutingWithCounts({3, 2}, 2, 1), Error) << "5 rows are not whole tokens";
  EXPECT_THROW(RoutingWithCounts({4, 0}, 2, 1), Error) << "4 rows of one expert over 2 tokens";
}

TEST(SwapForecast, ContiguousOwnersAsThePlacement) {
  EXPECT_EQ(ContiguousOwners(8, 3), (std::vector<int>{0, 0, 0, 1, 1, 1, 2, 2}));
  EXPECT_EQ(ContiguousOwners(4, 2), (std::vector<int>{0, 0, 1, 1}));
  EXPECT_THROW(ContiguousOwners(2, 3), Error);
}

TEST(SwapForecast, SwapsEvenASkewedRoutersLoad) {
  // Two hot experts on rank 0: routed rows 160 vs 40, max / mean 1.6.
  const std::vector<std::vector<int64_t>> layer = {{80, 80, 20, 20}};
  const std::vector<std::vector<std::vector<int64_t>>> counts(4, layer);
  const auto never = ForecastSwaps(counts, 2, 2, 0);
  const auto every = ForecastSwaps(counts, 2, 2, 1);
  ASSERT_EQ(every.size(), 4u);
  for (size_t s = 0; s < 4; ++s) {
    EXPECT_DOUBLE_EQ(never[s].planned[0].imbalance, 1.6);
    EXPECT_DOUBLE_EQ(never[s].swapped[0].imbalance, 1.6) << "no swaps";
    EXPECT_EQ(never[s].swaps, 0);
    EXPECT_DOUBLE_EQ(every[s].planned[0].imbalance, 1.6);
  }
  EXPECT_DOUBLE_EQ(every[0].swapped[0].imbalance, 1.6) << "the first swap takes effect after step 1";
  EXPECT_EQ(every[0].swaps, 1);
  for (size_t s = 1; s < 4; ++s)  // later swaps only trade co-occurrences (the deduplicated rows)
    EXPECT_DOUBLE_EQ(every[s].swapped[0].imbalance, 1.0) << "a hot expert on each rank, step " << s + 1;
}

// What the plan prices from a run's routing: uniform counts give the
// uniform busiest share; hot experts in one range load their rank; swaps
// spread them.
TEST(SwapForecast, LoadOfRoutingForThePlan) {
  const std::vector<std::vector<int64_t>> uniform = {{50, 50, 50, 50, 50, 50, 50, 50}};  // 200 tokens, top-2
  const RoutingLoad flat = LoadOfRouting(uniform, 2, 3, false);
  EXPECT_DOUBLE_EQ(flat.busiest_routed_share[0], 3.0 / 8) << "ranks hold 3, 3 and 2 experts";
  EXPECT_GT(flat.busiest_dedup_per_token[0], 0.5);
  EXPECT_LE(flat.busiest_dedup_per_token[0], 1.0);
  const std::vector<std::vector<int64_t>> hot = {{150, 150, 20, 20, 20, 20, 10, 10}};  // experts 0 and 1 hot
  const RoutingLoad planned = LoadOfRouting(hot, 2, 3, false), swapped = LoadOfRouting(hot, 2, 3, true);
  EXPECT_DOUBLE_EQ(planned.busiest_routed_share[0], 320.0 / 400);
  EXPECT_LT(swapped.busiest_routed_share[0], 0.5) << "the two hot experts on different ranks";
  EXPECT_LT(swapped.busiest_dedup_per_token[0], planned.busiest_dedup_per_token[0]);
}

}  // namespace
}  // namespace hetermoe::planner
