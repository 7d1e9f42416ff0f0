// Algorithm 1 (Asym-EA): the paper's worked example and the edge cases
// (memory caps and floors, M != N, no gain, bad shapes).
#include "planner/asym_ea.h"

#include <gtest/gtest.h>

#include <numeric>

#include "common/error.h"

namespace hetermoe::planner {
namespace {

// The worked example: one attention GPU, one expert GPU with six experts
// per layer, T_A = 3, T_EE = 4 (33% slower), an expert on the attention GPU
// as fast as on the expert GPU (2/3), three layers.
AsymEaInputs WorkedExample() {
  AsymEaInputs in;
  in.layers = 3;
  in.experts_per_layer = 6;
  in.attention_ranks = 1;
  in.expert_ranks = 1;
  in.attention_seconds = 3;
  in.expert_rank_seconds = 4;
  in.offloaded_expert_seconds = 2.0 / 3.0;
  return in;
}

int Total(const std::vector<int>& v) { return std::accumulate(v.begin(), v.end(), 0); }

TEST(AsymEa, WorkedExampleOffloadsOneExpertInLayers2And3NotLayer1) {
  const AsymEaResult r = AssignAsymmetricExperts(WorkedExample());
  EXPECT_EQ(r.offloaded, (std::vector<int>{0, 1, 1}));
  EXPECT_EQ(r.n1, 1);
  EXPECT_EQ(r.n2, 1);
  EXPECT_DOUBLE_EQ(r.t_gather, 1.0);
  EXPECT_DOUBLE_EQ(r.t_squeeze, 4.0 / 6.0 + 2.0 / 3.0);  // one expert off the expert GPU + one onto the attention GPU
  EXPECT_DOUBLE_EQ(r.alpha, 1.0);
  EXPECT_DOUBLE_EQ(r.beta, 1.0);
}

TEST(AsymEa, NoGainWhenTheAttentionRanksAreTheBottleneck) {
  AsymEaInputs in = WorkedExample();
  in.expert_rank_seconds = 3;  // T_EE == T_A
  EXPECT_EQ(AssignAsymmetricExperts(in).offloaded, (std::vector<int>{0, 0, 0}));
  in.expert_rank_seconds = 2;  // T_EE < T_A
  const AsymEaResult r = AssignAsymmetricExperts(in);
  EXPECT_EQ(Total(r.offloaded), 0);
  EXPECT_LT(r.t_gather, 0);
}

TEST(AsymEa, MemoryCapOnAttentionRanksLimitsTheTotal) {
  AsymEaInputs in = WorkedExample();
  in.layers = 8;
  in.expert_rank_seconds = 6;  // a big gap: every layer would move experts
  const int unlimited = Total(AssignAsymmetricExperts(in).offloaded);
  in.n_max = 2;  // each attention rank holds at most two more experts
  const AsymEaResult r = AssignAsymmetricExperts(in);
  EXPECT_GT(unlimited, 2);
  EXPECT_EQ(Total(r.offloaded), 2);
  EXPECT_LT(r.alpha, 1.0);
  // The cap spreads the moves over the layers instead of front-loading them.
  EXPECT_EQ(r.offloaded.front(), 0);
}

TEST(AsymEa, MemoryFloorOnExpertRanksForcesMoves) {
  AsymEaInputs in = WorkedExample();
  in.layers = 4;
  const int by_gain = Total(AssignAsymmetricExperts(in).offloaded);
  in.n_min = 4;  // each expert rank must shed four experts to fit
  const AsymEaResult r = AssignAsymmetricExperts(in);
  EXPECT_LT(by_gain, 4);
  EXPECT_EQ(Total(r.offloaded), 4);
  EXPECT_GT(r.beta, 1.0);

  // Even when moving gains nothing, memory wins; the forced moves go to the
  // last layers, one per layer.
  in.n_min = 3;
  in.expert_rank_seconds = 2;
  const AsymEaResult forced = AssignAsymmetricExperts(in);
  EXPECT_EQ(forced.offloaded, (std::vector<int>{0, 1, 1, 1}));
}

TEST(AsymEa, ContradictoryMemoryIsAnError) {
  AsymEaInputs in = WorkedExample();
  in.n_min = 3;
  in.n_max = 2;
  try {
    AssignAsymmetricExperts(in);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("must shed 3"), std::string::npos) << e.what();
  }
  in.n_max = 100;
  in.n_min = 100;  // more than the 18 experts the expert rank holds
  EXPECT_THROW(AssignAsymmetricExperts(in), Error);
}

TEST(AsymEa, FewerAttentionThanExpertRanksMovesChunksOfN) {
  // M = 2, N = 4: every attention rank takes n1 = 2, every expert rank gives
  // n2 = 1, so experts move 4 at a time.
  AsymEaInputs in;
  in.layers = 6;
  in.experts_per_layer = 16;
  in.attention_ranks = 2;
  in.expert_ranks = 4;
  in.attention_seconds = 2;
  in.expert_rank_seconds = 4;      // four experts, 1 each
  in.offloaded_expert_seconds = 0.5;
  const AsymEaResult r = AssignAsymmetricExperts(in);
  EXPECT_EQ(r.n1, 2);
  EXPECT_EQ(r.n2, 1);
  EXPECT_EQ(r.chunk, 4);
  EXPECT_DOUBLE_EQ(r.t_squeeze, 1 * 1.0 + 2 * 0.5);
  EXPECT_GT(Total(r.offloaded), 0);
  for (int o : r.offloaded) EXPECT_EQ(o % 4, 0);
}

TEST(AsymEa, MoreAttentionThanExpertRanksMovesChunksOfM) {
  // M = 4, N = 2: n1 = 1, n2 = 2.
  AsymEaInputs in;
  in.layers = 6;
  in.experts_per_layer = 8;
  in.attention_ranks = 4;
  in.expert_ranks = 2;
  in.attention_seconds = 2;
  in.expert_rank_seconds = 4;      // four experts, 1 each
  in.offloaded_expert_seconds = 0.5;
  const AsymEaResult r = AssignAsymmetricExperts(in);
  EXPECT_EQ(r.n1, 1);
  EXPECT_EQ(r.n2, 2);
  EXPECT_EQ(r.chunk, 4);
  EXPECT_DOUBLE_EQ(r.t_squeeze, 2 * 1.0 + 1 * 0.5);
  for (int o : r.offloaded) EXPECT_EQ(o % 4, 0);
}

TEST(AsymEa, EveryExpertRankKeepsOneExpertOfEveryLayer) {
  AsymEaInputs in = WorkedExample();
  in.experts_per_layer = 3;       // three experts per layer on one expert rank
  in.expert_rank_seconds = 40;    // a huge gap
  in.offloaded_expert_seconds = 0.1;
  const AsymEaResult r = AssignAsymmetricExperts(in);
  EXPECT_EQ(r.offloaded, (std::vector<int>{2, 2, 2}));
  in.experts_per_layer = 1;       // nothing can move
  EXPECT_EQ(Total(AssignAsymmetricExperts(in).offloaded), 0);
}

TEST(AsymEa, NeedsMDividingNOrNDividingM) {
  AsymEaInputs in = WorkedExample();
  in.attention_ranks = 2;
  in.expert_ranks = 3;
  EXPECT_FALSE(AsymEaShapeOk(2, 3));
  EXPECT_TRUE(AsymEaShapeOk(2, 4));
  EXPECT_TRUE(AsymEaShapeOk(6, 3));
  try {
    AssignAsymmetricExperts(in);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("2:3"), std::string::npos) << e.what();
  }
  in.attention_ranks = 0;
  EXPECT_THROW(AssignAsymmetricExperts(in), Error);
}

}  // namespace
}  // namespace hetermoe::planner
