// Cost model: FLOP counts by hand on a tiny shape, linearity, measured
// overrides, and the alpha-beta links.
#include "planner/cost_model.h"

#include <gtest/gtest.h>

#include "tests/planner/test_models.h"

namespace hetermoe::planner {
namespace {

ModelShape Tiny() {
  ModelShape s;
  s.layers = 2;
  s.hidden = 4;
  s.ffn = 6;
  s.heads = 2;
  s.kv_heads = 1;
  s.head_dim = 2;
  s.experts = 3;
  s.top_k = 2;
  s.vocab = 10;
  return s;
}

TEST(CostModel, FlopCountsOfATinyShapeByHand) {
  const ModelShape s = Tiny();
  // q,k,v: 2*4*(4 + 2*2) = 64; o: 2*4*4 = 32; gate: 2*4*3 = 24.
  EXPECT_DOUBLE_EQ(AttentionGemmFlopsPerToken(s), 120);
  // Causal QK^T and PV on 8 tokens: 2 * 8 * 8 * (2 heads * 2) = 512.
  EXPECT_DOUBLE_EQ(AttentionKernelFlopsPerSequence(s, 8), 512);
  EXPECT_DOUBLE_EQ(ExpertFlopsPerToken(s), 6 * 4 * 6);
  EXPECT_DOUBLE_EQ(HeadFlopsPerToken(s), 2 * 4 * 10);
  EXPECT_DOUBLE_EQ(DispatchBytesPerToken(s), 2 * 4 * 2);  // k copies of d fp16 values
  EXPECT_DOUBLE_EQ(s.ExpertParams(), 3 * 4 * 6);
  EXPECT_DOUBLE_EQ(s.AttentionParamsPerLayer(), 4 * 4 + 2 * 4 * 2 + 4 * 4 + 4 * 3 + 2 * 4);
  EXPECT_DOUBLE_EQ(s.ExpertlessParams(), 2 * 10 * 4 + 4 + 2 * s.AttentionParamsPerLayer());
}

TEST(CostModel, TimesAreLinearInSequencesAndTokens) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const ModelShape shape = testing::W1();
  const ComputeCostModel a40(shape, table.Find("A40"), Precision::kFp16, 8192);
  EXPECT_NEAR(a40.Attention(3).forward, 3 * a40.Attention(1).forward, 1e-12);
  EXPECT_NEAR(a40.Expert(3000).Total(), 3 * a40.Expert(1000).Total(), 1e-12);
  // Backward is about twice forward for GEMM-bound ops.
  const PassSeconds expert = a40.Expert(4096);
  EXPECT_GT(expert.backward / expert.forward, 1.9);
  EXPECT_LT(expert.backward / expert.forward, 2.1);
  // Attention per token grows with the sequence (the kernel is quadratic).
  const ComputeCostModel longer(shape, table.Find("A40"), Precision::kFp16, 32768);
  EXPECT_GT(longer.Attention(1).Total() / 4, a40.Attention(1).Total());
}

TEST(CostModel, MeasuredTimesReplaceTheFormulaForTheirModel) {
  GpuProfileTable table = GpuProfileTable::Builtin();
  const ModelShape shape = testing::W1();
  MeasuredProfile m;
  m.kind = "A40";
  m.hidden_size = shape.hidden;
  m.intermediate_size = shape.ffn;
  m.num_attention_heads = shape.heads;
  m.num_key_value_heads = shape.kv_heads;
  m.num_local_experts = shape.experts;
  m.seq_len = 4096;
  m.attention_sequences = 2;
  m.attention_forward_seconds = 0.010;
  m.attention_backward_seconds = 0.030;
  m.expert_tokens = 1000;
  m.expert_forward_seconds = 0.002;
  m.expert_backward_seconds = 0.004;
  table.PutMeasured(m);

  const MeasuredProfile* found = FindMeasured(table, "A40", shape, 4096);
  ASSERT_NE(found, nullptr);
  const ComputeCostModel measured(shape, table.Find("A40"), Precision::kFp16, 4096, found);
  EXPECT_DOUBLE_EQ(measured.Attention(4).forward, 0.020);
  EXPECT_DOUBLE_EQ(measured.Attention(4).backward, 0.060);
  EXPECT_DOUBLE_EQ(measured.Expert(500).forward, 0.001);
  EXPECT_DOUBLE_EQ(measured.Expert(500).backward, 0.002);

  // At another length the attention measurement does not apply; the expert one does.
  const ComputeCostModel other(shape, table.Find("A40"), Precision::kFp16, 8192, found);
  const ComputeCostModel formula(shape, table.Find("A40"), Precision::kFp16, 8192);
  EXPECT_DOUBLE_EQ(other.Attention(1).forward, formula.Attention(1).forward);
  EXPECT_DOUBLE_EQ(other.Expert(500).forward, 0.001);

  // Another model's measurement is ignored.
  EXPECT_EQ(FindMeasured(table, "A40", testing::D1(), 4096), nullptr);
  EXPECT_EQ(FindMeasured(table, "V100", shape, 4096), nullptr);
}

TEST(CostModel, LinksFollowAlphaBetaAndShareTheNic) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const LinkModel nvlink = IntraNodeLink(table.Find("V100"), 10);
  EXPECT_DOUBLE_EQ(nvlink.Seconds(150e9, 1), 1.0 + 10e-6);
  EXPECT_DOUBLE_EQ(nvlink.Seconds(0, 4), 0.0);
  // 100 Gb/s shared by 4 GPUs: 3.125 GB/s each; 8 peers pay 8 latencies.
  const LinkModel shared = InterNodeLink(table.Find("V100"), 100, 10, 4);
  EXPECT_DOUBLE_EQ(shared.bytes_per_second, 3.125e9);
  EXPECT_NEAR(shared.Seconds(3.125e9, 8), 1.0 + 80e-6, 1e-12);
  // A T4 cannot feed a 400 Gb/s NIC faster than its PCIe 3.0 link.
  EXPECT_DOUBLE_EQ(InterNodeLink(table.Find("T4"), 400, 10, 1).bytes_per_second, 16e9);
}

}  // namespace
}  // namespace hetermoe::planner
