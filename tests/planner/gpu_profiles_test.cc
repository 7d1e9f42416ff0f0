// The built-in GPU table: lookups, and the calibration the efficiencies were
// tuned for (HeterMoE's measured ratios on Mixtral-8x7B shapes, fwd+bwd).
#include "planner/gpu_profiles.h"

#include <gtest/gtest.h>

#include "common/error.h"
#include "planner/cost_model.h"
#include "tests/planner/test_models.h"

namespace hetermoe::planner {
namespace {

using testing::Mixtral8x7B;

// Speed ratio fast/slow of the attention module (one sequence) and of one
// expert FFN (one sequence's tokens) at `seq_len`.
struct Ratios {
  double attention;
  double expert;
};

Ratios SpeedRatios(const char* fast, const char* slow, int64_t seq_len) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const ModelShape shape = Mixtral8x7B();
  const ComputeCostModel f(shape, table.Find(fast), Precision::kFp16, seq_len);
  const ComputeCostModel s(shape, table.Find(slow), Precision::kFp16, seq_len);
  const double tokens = static_cast<double>(seq_len);
  return {s.Attention(1).Total() / f.Attention(1).Total(), s.Expert(tokens).Total() / f.Expert(tokens).Total()};
}

TEST(GpuProfiles, CalibratedToHeterMoEA40V100Ratios) {
  // Paper: a V100 runs an expert at ~80% of an A40's speed at every length;
  // the A40 is 3.7x faster on attention at 64K. Tolerance 3%.
  for (int64_t t : {4096, 16384, 65536}) {
    EXPECT_NEAR(1.0 / SpeedRatios("A40", "V100", t).expert, 0.80, 0.024) << "seq_len " << t;
  }
  EXPECT_NEAR(SpeedRatios("A40", "V100", 65536).attention, 3.7, 0.11);
  // Attention's advantage grows with length (the kernel's share grows).
  EXPECT_LT(SpeedRatios("A40", "V100", 4096).attention, SpeedRatios("A40", "V100", 16384).attention);
}

TEST(GpuProfiles, CalibratedToHeterMoEL40ST4Ratios) {
  // Paper: L40S vs T4 7.0x on the MLP, 9.9x (4K) to 13.6x (64K) on attention.
  EXPECT_NEAR(SpeedRatios("L40S", "T4", 4096).expert, 7.0, 0.21);
  EXPECT_NEAR(SpeedRatios("L40S", "T4", 65536).expert, 7.0, 0.21);
  EXPECT_NEAR(SpeedRatios("L40S", "T4", 4096).attention, 9.9, 0.3);
  EXPECT_NEAR(SpeedRatios("L40S", "T4", 65536).attention, 13.6, 0.41);
}

TEST(GpuProfiles, EveryKindHasDatasheetNumbersAndASource) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  for (const char* kind : {"V100", "T4", "A10", "A40", "A100-40GB", "A100-80GB", "L40S", "H100"}) {
    const GpuProfile& p = table.Find(kind);
    EXPECT_GT(p.peak_fp16_tflops, 0) << kind;
    EXPECT_GT(p.memory_gib, 0) << kind;
    EXPECT_GT(p.memory_bandwidth_gbs, 0) << kind;
    EXPECT_GT(p.intra_node_gbs, 0) << kind;
    EXPECT_GT(p.gemm_efficiency, 0) << kind;
    EXPECT_LE(p.gemm_efficiency, 1) << kind;
    EXPECT_FALSE(p.attention_efficiency.points.empty()) << kind;
    EXPECT_FALSE(p.source.empty()) << kind;
  }
  EXPECT_DOUBLE_EQ(table.Find("H100").peak_bf16_tflops, 989);
  EXPECT_DOUBLE_EQ(table.Find("A100-40GB").memory_bandwidth_gbs, 1555);
  EXPECT_DOUBLE_EQ(table.Find("A100-80GB").memory_bandwidth_gbs, 2039);
}

TEST(GpuProfiles, NamesAsOperatorsWriteThem) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  EXPECT_EQ(table.Find("a40").kind, "A40");
  EXPECT_EQ(table.Find("NVIDIA-A40").kind, "A40");
  EXPECT_EQ(table.Find("Tesla-V100-SXM2-32GB").kind, "V100");
  EXPECT_EQ(table.Find("NVIDIA-A100-SXM4-40GB").kind, "A100-40GB");
  EXPECT_EQ(table.Find("A100").kind, "A100-80GB");
  EXPECT_EQ(table.Find("h100 sxm").kind, "H100");
}

TEST(GpuProfiles, UnknownKindNamesTheKnownOnes) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  try {
    table.Find("K80");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown GPU kind 'K80'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("V100"), std::string::npos) << e.what();
  }
}

TEST(GpuProfiles, PrecisionIsBf16OnlyWhenEveryKindHasIt) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  EXPECT_EQ(CommonPrecision({&table.Find("A40"), &table.Find("H100")}), Precision::kBf16);
  EXPECT_EQ(CommonPrecision({&table.Find("A40"), &table.Find("V100")}), Precision::kFp16);
}

TEST(EfficiencyCurve, InterpolatesInLogLengthAndHoldsAtTheEnds) {
  const EfficiencyCurve curve{{{4096, 0.4}, {65536, 0.6}}};
  EXPECT_DOUBLE_EQ(curve.At(1024), 0.4);
  EXPECT_DOUBLE_EQ(curve.At(4096), 0.4);
  EXPECT_NEAR(curve.At(16384), 0.5, 1e-12);  // halfway in log2
  EXPECT_DOUBLE_EQ(curve.At(1 << 20), 0.6);
}

}  // namespace
}  // namespace hetermoe::planner
