// Memory model: n_min / n_max of a ZP group, the refusals it explains, and
// the EP rank's footprint.
#include "planner/memory_model.h"

#include <gtest/gtest.h>

#include "tests/planner/test_models.h"

namespace hetermoe::planner {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

ZpMemoryInputs Group(const ModelShape& model, const GpuProfileTable& table, int S, int M, int N, int64_t seq_len) {
  ZpMemoryInputs in;
  in.model = &model;
  in.seq_len = seq_len;
  in.sequences_per_attention_rank = S;
  in.micro_batches = S;
  in.attention_ranks = M;
  in.expert_ranks = N;
  in.attention_gpu = &table.Find("A40");
  in.expert_gpu = &table.Find("V100");
  return in;
}

TEST(MemoryModel, UsableMemoryLeavesRoomForContextAndFragmentation) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  EXPECT_NEAR(UsableBytes(table.Find("A40")) / kGiB, 48 * 0.92 - 1, 1e-9);
}

TEST(MemoryModel, SmallBatchFitsWithRoomToSpare) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const ModelShape w1 = testing::W1();
  const ZpMemory m = ZpMemoryModel(Group(w1, table, 1, 6, 6, 4096));
  EXPECT_EQ(m.experts_per_expert_rank, 4 * 2);  // 12 experts per layer over 6 expert ranks, 4 layers
  EXPECT_EQ(m.n_min, 0);
  EXPECT_GT(m.n_max, 0);
  EXPECT_TRUE(m.AttentionFits());
  EXPECT_EQ(m.Problem(false, 0, 0), "");
  // One expert's state: 16 bytes per parameter, 3 d f parameters.
  EXPECT_GT(m.expert_on_expert_rank, 16.0 * 3 * 2048 * 7168);
}

TEST(MemoryModel, ExpertRanksThatCannotHoldTheirExpertsGiveNMin) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const ModelShape w1 = testing::W1();
  // One V100 for all 48 experts of W1 with 16K-token sequences.
  const ZpMemory m = ZpMemoryModel(Group(w1, table, 2, 1, 1, 16384));
  EXPECT_EQ(m.experts_per_expert_rank, 48);
  EXPECT_GT(m.n_min, 0);
  const std::string without = m.Problem(false, 0, 0);
  EXPECT_NE(without.find("an expert rank (V100) holds 48 experts"), std::string::npos) << without;
  // Asym-EA can fix it only if the attention rank takes enough.
  const std::string with = m.Problem(true, 1, 1);
  if (m.n_max >= m.n_min) {
    EXPECT_EQ(with, "");
  } else {
    EXPECT_NE(with.find("can take only"), std::string::npos) << with;
  }
}

TEST(MemoryModel, TooManySequencesOverflowTheAttentionRank) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const ModelShape w1 = testing::W1();
  const ZpMemory m = ZpMemoryModel(Group(w1, table, 64, 6, 6, 32768));
  EXPECT_FALSE(m.AttentionFits());
  EXPECT_EQ(m.n_max, 0);
  EXPECT_NE(m.Problem(true, 1, 1).find("an attention rank (A40) needs"), std::string::npos);
}

TEST(MemoryModel, OneMicroBatchInFlightNeedsLessThanZebra) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const ModelShape w1 = testing::W1();
  ZpMemoryInputs in = Group(w1, table, 4, 3, 3, 16384);
  const ZpMemory zebra = ZpMemoryModel(in);
  in.micro_batches_in_flight = 1;
  const ZpMemory sequential = ZpMemoryModel(in);
  EXPECT_LT(sequential.attention_base, zebra.attention_base);
  EXPECT_LT(sequential.expert_on_expert_rank, zebra.expert_on_expert_rank);
  EXPECT_LE(sequential.n_min, zebra.n_min);
}

// train.zero 1: an attention rank keeps parameters and gradients (8 bytes
// per expert-less parameter) and 1/A of the two moments (8 bytes).
TEST(MemoryModel, ZeroShardsTheExpertlessMomentsOverTheAttentionRanks) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const ModelShape w1 = testing::W1();
  ZpMemoryInputs in = Group(w1, table, 1, 6, 6, 4096);
  const ZpMemory whole = ZpMemoryModel(in);
  in.optimizer_shards = 12;  // 2 groups of 6 attention ranks
  const ZpMemory sharded = ZpMemoryModel(in);
  const double P = static_cast<double>(w1.ExpertlessParams());
  EXPECT_NEAR(whole.attention_state, 16.0 * P, 1.0);
  EXPECT_NEAR(sharded.attention_state, 8.0 * P + 8.0 * P / 12, 1.0);
  EXPECT_NEAR(whole.attention_base - sharded.attention_base, 8.0 * P * 11 / 12, 1.0);
  EXPECT_GE(sharded.n_max, whole.n_max);
  EXPECT_EQ(sharded.expert_on_expert_rank, whole.expert_on_expert_rank) << "experts are not sharded";
}

TEST(MemoryModel, MeasuredStateBytesOverrideTheFormula) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const ModelShape w1 = testing::W1();
  MeasuredProfile measured;
  measured.expert_bytes = 1.0 * kGiB;
  measured.expertless_model_bytes = 10.0 * kGiB;
  ZpMemoryInputs in = Group(w1, table, 1, 6, 6, 4096);
  const ZpMemory formula = ZpMemoryModel(in);
  in.attention_measured = &measured;
  in.expert_measured = &measured;
  const ZpMemory m = ZpMemoryModel(in);
  EXPECT_NEAR(m.attention_base - formula.attention_base, 10.0 * kGiB - 16.0 * w1.ExpertlessParams(), 1.0);
  EXPECT_NEAR(m.expert_on_expert_rank - formula.expert_on_expert_rank, 1.0 * kGiB - 16.0 * w1.ExpertParams(), 1.0);
}

TEST(MemoryModel, EpRankHoldsTheExpertlessModelAndItsShareOfExperts) {
  const ModelShape w1 = testing::W1();
  const double one = EpRankBytes(w1, 4096, 1, 12, 4, true, 1);
  const double fewer_ranks = EpRankBytes(w1, 4096, 1, 6, 4, true, 1);
  EXPECT_GT(one, 16.0 * (w1.ExpertlessParams() + 4 * w1.ExpertParams()));
  EXPECT_NEAR(fewer_ranks - one, 16.0 * 4 * w1.ExpertParams(), 1.0);  // 8 instead of 4 experts
}

}  // namespace
}  // namespace hetermoe::planner
