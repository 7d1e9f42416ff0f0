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

// train.recompute: attention ranks keep per layer and token the input and
// the k expert outputs (fp16) and the router probabilities (fp32), plus one
// micro-batch's layer whole; expert ranks keep each routed row's input
// (fp16), plus one micro-batch's routed rows whole.
TEST(MemoryModel, RecomputationKeepsOnlyTheInputs) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const ModelShape w1 = testing::W1();
  ZpMemoryInputs in = Group(w1, table, 4, 3, 3, 16384);
  in.micro_batches = 2;
  const ZpMemory kept = ZpMemoryModel(in);
  in.recompute_attention = in.recompute_experts = true;
  const ZpMemory recomputed = ZpMemoryModel(in);
  const double d = w1.hidden, f = w1.ffn, k = w1.top_k, L = w1.layers;
  const double tokens = 4.0 * 16384, micro = tokens / 2;
  const double whole = AttentionActivationBytesPerToken(w1);
  const double attention_saved = L * tokens * (whole - (2.0 * (1 + k) * d + 4.0 * w1.experts)) - micro * whole;
  EXPECT_NEAR(kept.attention_base - recomputed.attention_base, attention_saved, 1.0);
  const double per_expert_tokens = 3.0 * tokens * k / w1.experts;
  EXPECT_NEAR(kept.expert_on_expert_rank - recomputed.expert_on_expert_rank, per_expert_tokens * 2.0 * 3.0 * f, 1.0);
  EXPECT_NEAR(recomputed.expert_base - kept.expert_base, micro * k * 2.0 * 3.0 * f, 1.0);
  EXPECT_LE(recomputed.n_min, kept.n_min);
  EXPECT_GE(recomputed.n_max, kept.n_max);
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
