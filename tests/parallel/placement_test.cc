// Placement and task order: pure logic, checked against the paper's schedule.
#include <gtest/gtest.h>

#include <algorithm>

#include "common/error.h"
#include "trainer/parallel/placement.h"
#include "trainer/parallel/task_order.h"

namespace hetermoe::parallel {
namespace {

std::string Order(const Placement& p, int rank, int in_flight = 0) {
  std::string s;
  for (const Task& t : TaskOrder(p, rank, in_flight)) s += (s.empty() ? "" : " ") + ToString(t);
  return s;
}

TEST(Placement, ExpertsSplitContiguouslyOverExpertRanks) {
  const Placement p = MakePlacement(Schedule::kZebra, 2, 3, 1, 2, 8, 4, {});
  EXPECT_EQ(p.world_size(), 5);
  EXPECT_EQ(p.micro_per_rank, 2);
  // attention ranks hold nothing; 8 experts over 3 expert ranks: 3, 3, 2.
  EXPECT_EQ(p.owners[0][0].count, 0);
  EXPECT_EQ(p.owners[0][1].count, 0);
  EXPECT_EQ(p.owners[0][2].first, 0);
  EXPECT_EQ(p.owners[0][2].count, 3);
  EXPECT_EQ(p.owners[0][3].first, 3);
  EXPECT_EQ(p.owners[0][4].first, 6);
  EXPECT_EQ(p.owners[0][4].count, 2);
  EXPECT_EQ(p.MicroBatchOf(1, 1), 3);
}

TEST(Placement, AsymEaMovesTheLastExpertsToAttentionRanks) {
  const Placement p = MakePlacement(Schedule::kZebra, 2, 2, 1, 3, 8, 2, {0, 2, 4});
  EXPECT_EQ(p.owners[0][0].count, 0);
  EXPECT_EQ(p.owners[1][0].first, 6);  // layer 2: experts 6 and 7 move, one each
  EXPECT_EQ(p.owners[1][1].first, 7);
  EXPECT_EQ(p.owners[1][2].count, 3);  // the rest: 6 over 2 expert ranks
  EXPECT_EQ(p.owners[2][0].count, 2);  // layer 3: 4 move, two each
  EXPECT_EQ(p.owners[2][3].count, 2);
}

TEST(Placement, RefusesImpossibleShapes) {
  EXPECT_THROW(MakePlacement(Schedule::kZebra, 2, 2, 1, 2, 8, 3, {}), Error);      // 3 micro over 2
  EXPECT_THROW(MakePlacement(Schedule::kZebra, 2, 2, 1, 2, 8, 2, {1, 0}), Error);  // 1 not a multiple of M
  EXPECT_THROW(MakePlacement(Schedule::kZebra, 1, 4, 1, 2, 8, 2, {6, 0}), Error);  // 2 left for 4 ranks
  EXPECT_THROW(MakePlacement(Schedule::kZebra, 1, 2, 1, 2, 8, 2, {0}), Error);     // wrong length
  try {
    MakePlacement(Schedule::kZebra, 2, 2, 2, 2, 8, 6, {});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of the 4 attention ranks"), std::string::npos) << e.what();
  }
}

TEST(Placement, EpSpreadsExpertsOverEveryRank) {
  const Placement p = MakePlacement(Schedule::kEp, 1, 3, 1, 1, 8, 4, {});
  EXPECT_EQ(p.attention_per_group, 4);
  EXPECT_EQ(p.micro_per_rank, 1);
  for (int r = 0; r < 4; ++r) {
    EXPECT_TRUE(p.IsAttention(r));
    EXPECT_EQ(p.owners[0][r].count, 2);
  }
}

// HeterMoE Theorem 1's order for L = 3 layers, R = 2 micro-batches.
TEST(TaskOrder, ZebraFollowsTheorem1) {
  const Placement p = MakePlacement(Schedule::kZebra, 1, 1, 1, 3, 4, 2, {});
  EXPECT_EQ(Order(p, 0),
            "A^F(1,1) A^F(1,2) A^F(2,1) A^F(2,2) A^F(3,1) A^F(3,2) H(1) H(2) "
            "A^B(3,1) A^B(3,2) A^B(2,1) A^B(2,2) A^B(1,1) A^B(1,2)");
  EXPECT_EQ(Order(p, 1),
            "E^F(1,1) E^F(1,2) E^F(2,1) E^F(2,2) E^F(3,1) E^F(3,2) "
            "E^B(3,1) E^B(3,2) E^B(2,1) E^B(2,2) E^B(1,1) E^B(1,2)");
}

// parallel.micro_batches_in_flight: zebra's order, wave by wave; a wave's
// micro-batches finish (A^B of layer 1) before the next wave's start.
TEST(TaskOrder, ZebraInWavesBoundsTheMicroBatchesInFlight) {
  const Placement p = MakePlacement(Schedule::kZebra, 1, 1, 1, 2, 4, 3, {});
  EXPECT_EQ(Order(p, 0, 2),
            "A^F(1,1) A^F(1,2) A^F(2,1) A^F(2,2) H(1) H(2) A^B(2,1) A^B(2,2) A^B(1,1) A^B(1,2) "
            "A^F(1,3) A^F(2,3) H(3) A^B(2,3) A^B(1,3)");
  EXPECT_EQ(Order(p, 1, 2),
            "E^F(1,1) E^F(1,2) E^F(2,1) E^F(2,2) E^B(2,1) E^B(2,2) E^B(1,1) E^B(1,2) "
            "E^F(1,3) E^F(2,3) E^B(2,3) E^B(1,3)");
  EXPECT_EQ(Order(p, 0, 3), Order(p, 0)) << "a wave of every micro-batch is plain zebra";
  EXPECT_EQ(Order(p, 0, 9), Order(p, 0));
  for (int w = 1; w <= 3; ++w) {
    int alive = 0, most = 0;
    for (const Task& t : TaskOrder(p, 0, w)) {
      if (t.kind == Task::Kind::kAttnFwd && t.layer == 0) most = std::max(most, ++alive);
      if (t.kind == Task::Kind::kAttnBwd && t.layer == 0) --alive;
    }
    EXPECT_EQ(most, w);
  }
}

TEST(TaskOrder, AsymEaExpertsRunAfterTheLayersAttention) {
  const Placement p = MakePlacement(Schedule::kZebra, 1, 1, 1, 2, 4, 2, {0, 1});
  EXPECT_EQ(Order(p, 0),
            "A^F(1,1) A^F(1,2) A^F(2,1) A^F(2,2) E^F(2,1) E^F(2,2) H(1) H(2) "
            "E^B(2,1) E^B(2,2) A^B(2,1) A^B(2,2) A^B(1,1) A^B(1,2)");
}

TEST(TaskOrder, SequentialRunsOneMicroBatchAtATime) {
  const Placement p = MakePlacement(Schedule::kSequential, 1, 1, 1, 2, 4, 2, {});
  EXPECT_EQ(Order(p, 0), "A^F(1,1) A^F(2,1) H(1) A^B(2,1) A^B(1,1) A^F(1,2) A^F(2,2) H(2) A^B(2,2) A^B(1,2)");
  EXPECT_EQ(Order(p, 1), "E^F(1,1) E^F(2,1) E^B(2,1) E^B(1,1) E^F(1,2) E^F(2,2) E^B(2,2) E^B(1,2)");
}

TEST(TaskOrder, EpInterleavesAttentionAndExperts) {
  const Placement p = MakePlacement(Schedule::kEp, 1, 1, 1, 2, 4, 2, {});
  EXPECT_EQ(Order(p, 1), "A^F(1,1) E^F(1,1) A^F(2,1) E^F(2,1) H(1) E^B(2,1) A^B(2,1) E^B(1,1) A^B(1,1)");
}

}  // namespace
}  // namespace hetermoe::parallel
