// HierMoE's token deduplication as the planner prices it (planner/dedup.h):
// the duplicate share against the paper's table and against routing drawn at
// random, and the ZP group's exchanges with and without it.
#include "planner/dedup.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "common/error.h"
#include "planner/gpu_profiles.h"
#include "planner/zp_group.h"
#include "tests/planner/test_clusters.h"
#include "tests/planner/test_models.h"

namespace hetermoe::planner {
namespace {

// HierMoE's table (algorithms.md section 2): duplicate share in percent
// for R groups and top-k, uniform routing.
struct PaperRow {
  int groups;
  double share[4];  // k = 2, 4, 6, 8
};
constexpr PaperRow kPaper[] = {{32, {2, 4, 7, 9}}, {16, {3, 9, 14, 18}}, {8, {6, 17, 27, 34}}, {4, {12, 32, 46, 55}}};
constexpr int kTopK[] = {2, 4, 6, 8};

TEST(Dedup, ReproducesThePapersDuplicationTableWithinOnePoint) {
  // The table states no E; with E = 512 (as large as MoE models route over)
  // the formula and the measured share both land within a point of every
  // entry. (E = 256 misses one entry by 1.03 points, E -> infinity by 1.34:
  // the table's E is large but finite.)
  const int64_t E = 512;
  double worst = 0;
  for (const PaperRow& row : kPaper)
    for (int i = 0; i < 4; ++i) {
      const double formula = 100 * DuplicateShare(E, row.groups, kTopK[i]);
      const double measured = 100 * MeasureDuplicateShare(E, row.groups, kTopK[i], 200000, 7 + i);
      EXPECT_NEAR(formula, row.share[i], 1.0) << "R=" << row.groups << " k=" << kTopK[i];
      EXPECT_NEAR(measured, row.share[i], 1.0) << "R=" << row.groups << " k=" << kTopK[i];
      // 200000 tokens: the measured share's standard error is under 0.12
      // points; 0.5 is over four of them.
      EXPECT_NEAR(measured, formula, 0.5) << "R=" << row.groups << " k=" << kTopK[i];
      worst = std::max(worst, std::abs(formula - row.share[i]));
    }
  std::printf("formula vs the paper's table (E = 512): worst %.2f points\n", worst);
}

TEST(Dedup, ExactCasesAndBadArguments) {
  EXPECT_DOUBLE_EQ(DuplicateShare(8, 8, 2), 0.0) << "one expert per group: nothing repeats";
  EXPECT_DOUBLE_EQ(DuplicateShare(8, 1, 2), 0.5) << "one group: a top-2 token is sent once instead of twice";
  EXPECT_DOUBLE_EQ(ReachProbability(8, 0, 2), 0.0);
  EXPECT_DOUBLE_EQ(ReachProbability(8, 8, 2), 1.0);
  // 8 experts, 2 groups of 4, top-2: P(both in one group) = 2 C(4,2) / C(8,2) = 12/28.
  EXPECT_NEAR(DuplicateShare(8, 2, 2), 0.5 * 12.0 / 28.0, 1e-12);
  // Unequal holders: 8 experts as 5 + 3, top-2: 2 - C(3,2)/C(8,2) - C(5,2)/C(8,2).
  EXPECT_NEAR(ExpectedDestinations(8, {5, 3}, 2), 2 - 3.0 / 28 - 10.0 / 28, 1e-12);
  EXPECT_THROW(DuplicateShare(10, 4, 2), hetermoe::Error);
  EXPECT_THROW(DuplicateShare(8, 2, 9), hetermoe::Error);
}

// The ZP group's exchanges: with dedup the forward's dispatch and the
// backward's input grads shrink, the forward's combine and the backward's
// output grads do not; turned off, every exchange is the whole one.
TEST(Dedup, TheGroupsDispatchAndBackwardCombineShrinkByTheShare) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const Inventory inventory = testing::Cluster({{"A100-80GB", 4, 4}, {"V100", 8, 8}});
  GroupShape shape;
  shape.attention_gpu = "A100-80GB";
  shape.expert_gpu = "V100";
  shape.attention_ranks = 4;
  shape.expert_ranks = 4;
  shape.groups = 1;
  shape.sequences_per_attention_rank = 4;
  shape.micro_batches = 2;
  const ModelShape model = testing::D1();
  const PlanningContext with(model, inventory, table, 8192, Precision::kFp16);
  const PlanningContext without(model, inventory, table, 8192, Precision::kFp16, 0, false, "none", false);
  const ZebraStepSpec a = GroupStepSpec(with, shape, {4, 1});
  const ZebraStepSpec b = GroupStepSpec(without, shape, {4, 1});
  const double share = DuplicateShare(model.experts, 4, model.top_k);
  ASSERT_GT(share, 0.05);
  for (int l = 0; l < a.layers; ++l) {
    EXPECT_DOUBLE_EQ(a.combine[l], b.combine[l]);
    EXPECT_DOUBLE_EQ(a.dispatch_backward[l], b.dispatch_backward[l]);
    EXPECT_DOUBLE_EQ(b.dispatch[l], b.combine_backward[l]);
    EXPECT_DOUBLE_EQ(a.dispatch[l], a.combine_backward[l]);
    // Bytes fall by the share; the link's latency does not.
    EXPECT_LT(a.dispatch[l], b.dispatch[l]);
    EXPECT_GT(a.dispatch[l], (1 - share) * b.dispatch[l] * 0.999);
  }
  std::printf("E=%lld top-%lld over 4 expert ranks: dispatch %.3f ms -> %.3f ms (share %.1f%%)\n",
              static_cast<long long>(model.experts), static_cast<long long>(model.top_k), 1e3 * b.dispatch[0],
              1e3 * a.dispatch[0], 100 * share);
}

// A group of 4 A100 attention ranks and 4 V100 expert ranks, 4 sequences
// per attention rank in 2 micro-batches.
GroupShape FourA100sToFourV100s() {
  GroupShape shape;
  shape.attention_gpu = "A100-80GB";
  shape.expert_gpu = "V100";
  shape.attention_ranks = 4;
  shape.expert_ranks = 4;
  shape.groups = 1;
  shape.sequences_per_attention_rank = 4;
  shape.micro_batches = 2;
  return shape;
}

// Node level: the 4 expert ranks share one V100 machine, away from the
// attention ranks' A100s. A token crosses to that machine once (rows per
// token 1 instead of the expected ranks it reaches) and the relay fans it out
// over NVLink, so the exchange gets cheaper; auto takes node there. With one
// V100 per machine there is nothing to relay and every depth prices the same.
TEST(Dedup, NodeLevelCrossesToEachExpertMachineOnce) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const GroupShape shape = FourA100sToFourV100s();
  const ModelShape model = testing::D1();
  auto spec = [&](int v100_per_node, const std::string& depth) {
    const Inventory inventory = testing::Cluster({{"A100-80GB", 4, 4}, {"V100", 8, v100_per_node}});
    const PlanningContext ctx(model, inventory, table, 8192, Precision::kFp16, 0, false, "none", true, depth);
    return GroupStepSpec(ctx, shape, {4, 1});
  };
  const ZebraStepSpec rank = spec(8, "rank"), node = spec(8, "node"), automatic = spec(8, "auto");
  for (int l = 0; l < rank.layers; ++l) {
    EXPECT_LT(node.dispatch[l], 0.8 * rank.dispatch[l]) << "layer " << l;
    EXPECT_DOUBLE_EQ(node.dispatch[l], node.combine_backward[l]);
    EXPECT_DOUBLE_EQ(node.combine[l], rank.combine[l]) << "outputs still travel whole";
    EXPECT_DOUBLE_EQ(automatic.dispatch[l], node.dispatch[l]);
  }
  const ZebraStepSpec rank1 = spec(1, "rank"), node1 = spec(1, "node");
  for (int l = 0; l < rank.layers; ++l) EXPECT_DOUBLE_EQ(node1.dispatch[l], rank1.dispatch[l]);
  std::printf("4 V100 expert ranks on one machine: dispatch %.3f ms at rank level, %.3f ms at node level\n",
              1e3 * rank.dispatch[0], 1e3 * node.dispatch[0]);
  EXPECT_THROW(spec(8, "machine"), hetermoe::Error);
}

// Links a run measured (its links.json) price the transfers instead of the
// profiles' numbers: the same shape's exchange follows them, and auto takes
// node level on slow links between machines and fast ones inside, rank
// level on equal links (the relay's extra hop does not pay).
TEST(Dedup, MeasuredLinksPriceTheExchangeAndTheDepth) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const GroupShape shape = FourA100sToFourV100s();
  const ModelShape model = testing::D1();
  const Inventory inventory = testing::Cluster({{"A100-80GB", 4, 4}, {"V100", 8, 8}});
  auto spec = [&](const std::string& depth, double inter_gbps, double intra_gbps) {
    const MeasuredLinks links{{20e-6, 8e-9 / inter_gbps}, {20e-6, 8e-9 / intra_gbps}, "nccl"};
    const PlanningContext ctx(model, inventory, table, 8192, Precision::kFp16, 0, false, "none", true, depth, links);
    return GroupStepSpec(ctx, shape, {4, 1});
  };
  const ZebraStepSpec slow = spec("rank", 10, 100), fast = spec("rank", 100, 100);
  EXPECT_GT(slow.dispatch[0], 5 * fast.dispatch[0]) << "a 10x slower link between machines prices the exchange";
  const ZebraStepSpec split_rank = spec("rank", 10, 200), split_auto = spec("auto", 10, 200);
  const ZebraStepSpec equal_rank = spec("rank", 100, 100), equal_auto = spec("auto", 100, 100);
  for (int l = 0; l < slow.layers; ++l) {
    EXPECT_LT(split_auto.dispatch[l], 0.8 * split_rank.dispatch[l]) << "node level where the links favour it";
    EXPECT_DOUBLE_EQ(equal_auto.dispatch[l], equal_rank.dispatch[l]) << "rank level on equal links";
  }
  std::printf("measured links, 10 Gbit/s between machines and 200 inside: dispatch %.3f ms at rank level, %.3f ms "
              "with auto; equal links at 100: %.3f ms either way\n",
              1e3 * split_rank.dispatch[0], 1e3 * split_auto.dispatch[0], 1e3 * equal_auto.dispatch[0]);
}

// A run's routing loads the expert ranks as it routed: hot experts in one
// rank's range lengthen its compute and the rows it receives; the load
// parallel.swap_every's swaps settle on brings them back near uniform.
TEST(Dedup, ARunsRoutingLoadsTheBusiestExpertRank) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const GroupShape shape = FourA100sToFourV100s();
  const ModelShape model = testing::D1();
  const Inventory inventory = testing::Cluster({{"A100-80GB", 4, 4}, {"V100", 8, 8}});
  // Top-2 over 1200 tokens: experts 0-3 (rank 0's range) take 300 rows each, the other 20 take 60.
  std::vector<int64_t> layer(static_cast<size_t>(model.experts), 60);
  for (int e = 0; e < 4; ++e) layer[e] = 300;
  const std::vector<std::vector<int64_t>> hot(static_cast<size_t>(model.layers), layer);
  auto spec = [&](const std::vector<std::vector<int64_t>>& routing, bool swap) {
    const PlanningContext ctx(model, inventory, table, 8192, Precision::kFp16, 0, false, "none", true, "rank",
                              std::nullopt, routing, swap);
    return GroupStepSpec(ctx, shape, {4, 1});
  };
  const ZebraStepSpec uniform = spec({}, false), skewed = spec(hot, false), swapped = spec(hot, true);
  EXPECT_GT(skewed.expert_rank[0].forward, 1.5 * uniform.expert_rank[0].forward);
  EXPECT_GT(skewed.dispatch[0], uniform.dispatch[0]);
  EXPECT_LT(swapped.expert_rank[0].forward, 0.75 * skewed.expert_rank[0].forward);
  EXPECT_LT(swapped.dispatch[0], skewed.dispatch[0]);
  std::printf("hot experts in one range: the busiest expert rank's forward %.3f ms (uniform %.3f ms), with swaps "
              "%.3f ms; dispatch %.3f / %.3f / %.3f ms\n",
              1e3 * skewed.expert_rank[0].forward, 1e3 * uniform.expert_rank[0].forward,
              1e3 * swapped.expert_rank[0].forward, 1e3 * skewed.dispatch[0], 1e3 * uniform.dispatch[0],
              1e3 * swapped.dispatch[0]);
  EXPECT_THROW(spec({layer}, false), hetermoe::Error) << "one layer of counts for a deeper model";
}

}  // namespace
}  // namespace hetermoe::planner
