// What a CUDA micro-batch keeps between its forward and its backward, on the
// tiny model of examples/tiny (4 layers, d 128, 8 experts, top-2), all
// experts local:
//  - train.recompute attention (DeviceMicroBatch::RecomputeAttention): the
//    loss and every gradient bitwise equal to the plain pass (the recompute
//    runs the same kernels on the same inputs), in fp32 and in the run's
//    16-bit format; the device memory held after forward falls by at least
//    95% of (L - 1) layers' attention activations (one shared set remains).
//  - 16-bit runs keep the activations backward reads only as GEMM operands
//    (the normed inputs a and m, the experts' act) in 16 bits: a second
//    micro-batch's forward holds, against fp32, what that predicts (2 bytes
//    less per element, less the fp32 staging buffer), within 2%.
// Memory is the device allocator's bytes in use (kernels/caching_allocator).
#include <cmath>
#include <memory>

#include "common/mixtral_config.h"
#include "tests/kernels/gpu_test_util.h"
#include "trainer/backend/cuda_model.h"
#include "trainer/model/parameters.h"

namespace hetermoe {
namespace {

using testing::GpuTest;

class ActivationsTest : public GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped()) return;
    config_ = io::LoadMixtralConfig(std::string(HETERMOE_SOURCE_DIR) + "/examples/tiny/config.json");
    layout_ = std::make_unique<model::ParameterLayout>(config_);
    params_.assign(layout_->total(), 0.0f);
    model::InitParameters(*layout_, config_.initializer_range, 99, params_.data());
    std::mt19937 rng(11);
    tokens_.resize(kBatch * kSeq + 1);
    for (auto& t : tokens_) t = static_cast<int32_t>(rng() % config_.vocab_size);
    inputs_.assign(tokens_.begin(), tokens_.end() - 1);
    targets_.assign(tokens_.begin() + 1, tokens_.end());
  }

  std::unique_ptr<backend::DeviceModel> Model(const std::string& precision) {
    backend::BackendOptions o;
    o.device = "cuda";
    o.precision = precision;
    auto m = std::make_unique<backend::DeviceModel>(config_, *layout_, o);
    m->ToDevice(params_.data(), m->params.data(), layout_->total());
    m->RefreshCompute16();
    return m;
  }

  struct Pass {
    model::LossParts loss;
    std::vector<float> grads;
    int64_t held = 0;  // device bytes the micro-batch added by the end of its forward
  };

  // One micro-batch through every stage, experts local, on `m`.
  Pass Run(backend::DeviceModel& m, bool recompute) {
    HM_CUDA_CHECK(cudaMemsetAsync(m.grads.data(), 0, m.grads.bytes(), m.s()));
    const auto before = static_cast<int64_t>(m.allocator.stats().bytes_in_use);
    backend::DeviceMicroBatch mb(m);
    if (recompute) mb.RecomputeAttention(std::make_shared<backend::AttentionActivations>());
    Pass p;
    mb.EmbedForward({inputs_.data(), targets_.data(), kBatch, kSeq});
    for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
      mb.AttentionForward(l);
      mb.ExpertsForward(l);
      mb.CombineForward(l);
    }
    p.loss = mb.HeadForward();
    p.held = static_cast<int64_t>(m.allocator.stats().bytes_in_use) - before;
    mb.HeadBackward(1.0f);
    for (int64_t l = config_.num_hidden_layers - 1; l >= 0; --l) {
      mb.CombineBackward(l);
      mb.ExpertsBackward(l);
      mb.AttentionBackward(l);
    }
    mb.EmbedBackward();
    p.grads.resize(layout_->total());
    m.ToHost(m.grads.data(), p.grads.data(), layout_->total());
    return p;
  }

  // Bytes of one layer's attention-block activations (AttentionActivations).
  int64_t AttentionSetBytes(bool compute16) const {
    const int64_t N = kBatch * kSeq, d = config_.hidden_size, hd = config_.HeadDim();
    const int64_t qd = config_.num_attention_heads * hd, kvd = config_.num_key_value_heads * hd;
    const int64_t fp32 = N + 2 * N * qd + 2 * N * kvd + kBatch * config_.num_attention_heads * kSeq + N * d + N;
    const int64_t normed = 2 * N * d;  // a and m
    return 4 * fp32 + (compute16 ? 2 : 4) * normed;
  }

  std::string Precision16() const { return Sm() >= 80 ? "bf16" : "fp16"; }

  static constexpr int64_t kBatch = 4, kSeq = 32;
  io::MixtralConfig config_;
  std::unique_ptr<model::ParameterLayout> layout_;
  std::vector<float> params_;
  std::vector<int32_t> tokens_, inputs_, targets_;
};

TEST_F(ActivationsTest, RecomputedAttentionGivesTheSameGradientsWithLessMemory) {
  for (const std::string& precision : {std::string("fp32"), Precision16()}) {
    SCOPED_TRACE(precision);
    auto m = Model(precision);
    const Pass plain = Run(*m, false);
    const Pass recomputed = Run(*m, true);
    EXPECT_EQ(recomputed.loss.total, plain.loss.total);
    ASSERT_EQ(recomputed.grads.size(), plain.grads.size());
    int64_t differ = 0;
    for (size_t i = 0; i < plain.grads.size(); ++i) differ += recomputed.grads[i] != plain.grads[i];
    EXPECT_EQ(differ, 0) << "gradient elements that differ after recomputing attention";
    const int64_t saved = plain.held - recomputed.held;
    const int64_t expected = (config_.num_hidden_layers - 1) * AttentionSetBytes(m->Compute16());
    std::printf("%s: forward holds %.1f KiB, %.1f KiB with attention recomputed: %.1f KiB less "
                "(%lld layers' attention activations: %.1f KiB)\n",
                precision.c_str(), plain.held / 1024.0, recomputed.held / 1024.0, saved / 1024.0,
                static_cast<long long>(config_.num_hidden_layers - 1), expected / 1024.0);
    EXPECT_GE(saved, 0.95 * static_cast<double>(expected));
  }
}

TEST_F(ActivationsTest, SixteenBitRunsKeepGemmOperandsInSixteenBits) {
  // The second micro-batch on each model: the model's own scratch (cast
  // buffers, the experts' staging) is in place by then, so what its forward
  // adds is the micro-batch's alone.
  auto fp32 = Model("fp32");
  auto half = Model(Precision16());
  ASSERT_TRUE(half->Compute16());
  Run(*fp32, false);
  Run(*half, false);
  const Pass a = Run(*fp32, false), b = Run(*half, false);
  const int64_t N = kBatch * kSeq, d = config_.hidden_size, f = config_.intermediate_size;
  const int64_t A = N * config_.num_experts_per_tok, L = config_.num_hidden_layers;
  // 2 bytes less for a and m [N, d] and the experts' act [A, f] of every
  // layer; the normed input's fp32 staging buffer [N, d] more.
  const int64_t predicted = L * 2 * (2 * N * d + A * f) - 4 * N * d;
  const int64_t saved = a.held - b.held;
  std::printf("forward holds %.1f KiB in fp32, %.1f KiB in %s: %.1f KiB less (predicted %.1f KiB)\n", a.held / 1024.0,
              b.held / 1024.0, Precision16().c_str(), saved / 1024.0, predicted / 1024.0);
  EXPECT_NEAR(static_cast<double>(saved), static_cast<double>(predicted), 0.02 * static_cast<double>(predicted));
  EXPECT_NEAR(b.loss.total, a.loss.total, 2e-2 * a.loss.total);
}

}  // namespace
}  // namespace hetermoe
