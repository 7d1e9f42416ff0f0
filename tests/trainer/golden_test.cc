// The CPU trainer against PyTorch: logits, losses and every parameter
// gradient of one global batch of the tiny golden model (top-2 of 4 experts,
// GQA 4:2 heads, 2 layers), computed by tests/reference/make_golden.py with an
// independent PyTorch implementation and autograd.
//
// Tolerances (fp32 on both sides, different summation orders):
//   logits       |ours - torch| <= 2e-5 + 1e-4 * |torch|
//   losses       relative 1e-5
//   gradients    per tensor, max |ours - torch| <= 1e-5 * max |torch| + 1e-8 (seen: ~1e-6)
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/mixtral_config.h"
#include "trainer/io/safetensors.h"
#include "trainer/io/token_file.h"
#include "trainer/model/mixtral.h"
#include "trainer/model/parameters.h"
#include "trainer/ops/gemm.h"

namespace hetermoe {
namespace {

std::string GoldenDir() {
  const char* dir = std::getenv("HETERMOE_GOLDEN_DIR");
  return dir ? dir : "";
}

class GoldenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = GoldenDir();
    if (dir_.empty()) GTEST_FAIL() << "HETERMOE_GOLDEN_DIR is not set (run through ctest: the "
                                      "reference.make_golden fixture creates it)";
    ops::SetNumThreads(2);
    config_ = io::LoadMixtralConfig(dir_ + "/config.json");
    layout_ = std::make_unique<model::ParameterLayout>(config_);
    // The first batch as llm.c reads it: tokens [0, B*T + 1), targets one later.
    std::vector<uint32_t> tokens(kBatch * kSeq + 1);
    io::TokenFile(dir_ + "/tokens.bin", config_.vocab_size).Read(0, kBatch * kSeq + 1, tokens.data());
    inputs_.assign(tokens.begin(), tokens.end() - 1);
    targets_.assign(tokens.begin() + 1, tokens.end());
  }

  struct Run {
    std::vector<float> logits, grads;
    double loss = 0, ce = 0, aux = 0;
  };

  // Loss and gradients of one global batch split into `micro` micro-batches,
  // exactly as the training loop does it.
  Run Compute(const std::string& weights, int micro) {
    std::vector<float> params(layout_->total());
    model::LoadParameters(*layout_, dir_ + "/" + weights, params.data());
    model::MixtralCpu m(config_, *layout_);
    Run r;
    r.grads.assign(layout_->total(), 0.0f);
    const int per = kBatch / micro;
    for (int j = 0; j < micro; ++j) {
      const model::MicroBatch mb{inputs_.data() + j * per * kSeq, targets_.data() + j * per * kSeq,
                                 per, kSeq};
      const auto loss = m.Forward(params.data(), mb);
      m.Backward(params.data(), r.grads.data(), 1.0f / micro);
      r.loss += loss.total / micro;
      r.ce += loss.ce / micro;
      r.aux += loss.aux / micro;
    }
    const model::MicroBatch all{inputs_.data(), targets_.data(), kBatch, kSeq};
    m.Forward(params.data(), all);
    r.logits = m.logits();
    return r;
  }

  void ExpectGradsMatch(const Run& r, const io::SafetensorsFile& golden, const std::string& prefix) {
    float worst_ratio = 0.0f;
    std::string worst_name;
    for (const auto& t : layout_->tensors()) {
      const std::vector<float> want = golden.ReadFloat(prefix + t.name);
      ASSERT_EQ(static_cast<int64_t>(want.size()), t.numel) << t.name;
      float scale = 0.0f, worst = 0.0f;
      for (float w : want) scale = std::max(scale, std::fabs(w));
      for (int64_t i = 0; i < t.numel; ++i)
        worst = std::max(worst, std::fabs(r.grads[t.offset + i] - want[i]));
      EXPECT_LE(worst, 1e-5f * scale + 1e-8f)
          << "gradient of " << t.name << ": max |diff| " << worst << ", max |torch| " << scale;
      if (scale > 0 && worst / scale > worst_ratio) {
        worst_ratio = worst / scale;
        worst_name = t.name;
      }
    }
    std::printf("worst gradient: %s, max|diff| / max|torch| = %.2e\n", worst_name.c_str(),
                worst_ratio);
  }

  static double Scalar(const io::SafetensorsFile& f, const std::string& name) {
    return f.ReadFloat(name).at(0);
  }

  static constexpr int kBatch = 4, kSeq = 16;
  std::string dir_;
  io::MixtralConfig config_;
  std::unique_ptr<model::ParameterLayout> layout_;
  std::vector<int32_t> inputs_, targets_;
};

TEST_F(GoldenTest, LogitsLossAndEveryGradientMatchPyTorch) {
  const auto golden = io::SafetensorsFile::Load(dir_ + "/golden.safetensors");
  const Run r = Compute("model.safetensors", 2);
  const std::vector<float> logits = golden.ReadFloat("logits");
  ASSERT_EQ(logits.size(), r.logits.size());
  for (size_t i = 0; i < logits.size(); ++i)
    ASSERT_NEAR(r.logits[i], logits[i], 2e-5 + 1e-4 * std::fabs(logits[i])) << "logit " << i;
  EXPECT_NEAR(r.loss, Scalar(golden, "loss"), 1e-5 * Scalar(golden, "loss"));
  EXPECT_NEAR(r.ce, Scalar(golden, "ce_loss"), 1e-5 * Scalar(golden, "ce_loss"));
  EXPECT_NEAR(r.aux, Scalar(golden, "aux_loss"), 1e-5 * Scalar(golden, "aux_loss"));
  ExpectGradsMatch(r, golden, "grad.");
}

TEST_F(GoldenTest, OneMicroBatchMatchesPyTorch) {
  const auto golden = io::SafetensorsFile::Load(dir_ + "/golden.safetensors");
  const Run r = Compute("model.safetensors", 1);
  EXPECT_NEAR(r.loss, Scalar(golden, "loss_r1"), 1e-5 * Scalar(golden, "loss_r1"));
  ExpectGradsMatch(r, golden, "grad_r1.");
}

TEST_F(GoldenTest, ExpertWithZeroTokensMatchesPyTorch) {
  const auto golden = io::SafetensorsFile::Load(dir_ + "/golden_zero_expert.safetensors");
  const Run r = Compute("model_zero_expert.safetensors", 2);
  EXPECT_NEAR(r.loss, Scalar(golden, "loss"), 1e-5 * Scalar(golden, "loss"));
  ExpectGradsMatch(r, golden, "grad.");
  // The starved expert's weights get exactly zero gradient.
  bool found_zero_expert = false;
  for (const auto& t : layout_->tensors()) {
    if (t.name.find(".experts.") == std::string::npos) continue;
    bool all_zero = true;
    for (int64_t i = 0; i < t.numel; ++i) all_zero &= r.grads[t.offset + i] == 0.0f;
    found_zero_expert |= all_zero;
  }
  EXPECT_TRUE(found_zero_expert) << "the fixture should starve one expert";
}

}  // namespace
}  // namespace hetermoe
