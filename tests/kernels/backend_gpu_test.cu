// The CUDA backend against the CPU backend on the tiny model of
// examples/tiny (4 layers, d 128, 8 experts, top-2): logits, losses, every
// gradient, expert counts, and whole training steps (micro-batches, clipping,
// AdamW). GPU tests skip without a GPU (gpu_test_util.h); the device
// selection tests run everywhere. compute-sanitizer commands: see the header
// of kernels_gpu_test.cu (the same binary).
//
// Tolerances (fp32 path), |gpu - cpu| <= atol + rtol |cpu|:
//   losses                                   rtol 1e-5
//   logits                                   atol 1e-4
//   gradients, per tensor                    atol 1e-3 * max|cpu grad of the tensor| + 1e-7
//   parameters after 3 AdamW steps (lr 1e-3) atol 1e-4 (a tenth of one step's update)
//   expert counts                            exact (a near-tie between the 2nd and 3rd
//                                            expert could flip; the test then says so)
// bf16 (sm_80+) / fp16 (sm_70/75, loss scaling): loss rtol 2e-2, gradient
// relative L2 error 5e-2.
#include <cmath>

#include "common/error.h"
#include "common/mixtral_config.h"
#if defined(HETERMOE_CUDA_EMULATOR)
#include "kernels/emulator/host_timeline.h"
#endif
#include "tests/kernels/gpu_test_util.h"
#include "trainer/backend/cpu_backend.h"
#include "trainer/backend/cuda_backend.h"
#include "trainer/model/mixtral.h"
#include "trainer/model/parameters.h"

namespace hetermoe {
namespace {

using testing::ExpectClose;
using testing::GpuTest;

class BackendTest : public GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped()) return;
    config_ = io::LoadMixtralConfig(std::string(HETERMOE_SOURCE_DIR) + "/examples/tiny/config.json");
    layout_ = std::make_unique<model::ParameterLayout>(config_);
    host_.params.assign(layout_->total(), 0.0f);
    host_.exp_avg.assign(layout_->total(), 0.0f);
    host_.exp_avg_sq.assign(layout_->total(), 0.0f);
    model::InitParameters(*layout_, config_.initializer_range, 1234, host_.params.data());
    std::mt19937 rng(5);
    tokens_.resize(kBatch * kSeq + 1);
    for (auto& t : tokens_) t = static_cast<int32_t>(rng() % config_.vocab_size);
  }

  // Micro-batch j of `count` equal slices of the kBatch sequences.
  model::MicroBatch Micro(int64_t j, int64_t count) {
    const int64_t per = kBatch / count;
    inputs_.assign(tokens_.begin(), tokens_.end() - 1);
    targets_.assign(tokens_.begin() + 1, tokens_.end());
    return {inputs_.data() + j * per * kSeq, targets_.data() + j * per * kSeq, per, kSeq};
  }

  backend::BackendOptions Options(const std::string& precision = "fp32") {
    backend::BackendOptions o;
    o.device = "cuda";
    o.precision = precision;
    return o;
  }

  // Per tensor: atol = rel * max|expected| + 1e-7.
  void ExpectGradsClose(const std::vector<float>& gpu, const std::vector<float>& cpu, double rel) {
    for (const auto& t : layout_->tensors()) {
      std::vector<float> a(gpu.begin() + t.offset, gpu.begin() + t.offset + t.numel);
      std::vector<float> e(cpu.begin() + t.offset, cpu.begin() + t.offset + t.numel);
      double mx = 0;
      for (float v : e) mx = std::max(mx, std::abs(double{v}));
      ExpectClose(a, e, 0, rel * mx + 1e-7, "gradient of " + t.name);
    }
  }

  static constexpr int64_t kBatch = 4, kSeq = 32;
  io::MixtralConfig config_;
  std::unique_ptr<model::ParameterLayout> layout_;
  backend::HostState host_;
  std::vector<int32_t> tokens_, inputs_, targets_;
};

TEST_F(BackendTest, ForwardBackwardMatchesCpuModel) {
  backend::CudaBackend gpu(config_, *layout_, Options());
  gpu.Upload(host_);
  model::MixtralCpu cpu(config_, *layout_);
  const auto mb = Micro(0, 1);
  const auto cpu_loss = cpu.Forward(host_.params.data(), mb);
  const auto gpu_loss = gpu.Forward(mb);
  ASSERT_EQ(gpu.ExpertCounts(), cpu.ExpertCounts())
      << "routing differs (a near-tie between experts flipped?): compare the logits below";
  EXPECT_NEAR(gpu_loss.ce, cpu_loss.ce, 1e-5 * cpu_loss.ce);
  EXPECT_NEAR(gpu_loss.aux, cpu_loss.aux, 1e-5 * cpu_loss.aux);
  EXPECT_NEAR(gpu_loss.total, cpu_loss.total, 1e-5 * cpu_loss.total);
  ExpectClose(gpu.DownloadLogits(), cpu.logits(), 0, 1e-4, "logits");

  std::vector<float> cpu_grads(layout_->total(), 0.0f);
  cpu.Backward(host_.params.data(), cpu_grads.data(), 1.0f);
  gpu.ZeroGrads();
  gpu.Backward(1.0f);
  ExpectGradsClose(gpu.DownloadGrads(), cpu_grads, 1e-3);
}

TEST_F(BackendTest, ExpertsWithZeroTokensMatchCpu) {
  // A zero gate in layer 0: every probability is exactly 1/E on both sides,
  // the tie-break picks experts 0..k-1 for every token and the others get
  // no tokens (their GEMMs are skipped, their gradients stay zero).
  const auto& gate = *layout_->Find("model.layers.0.block_sparse_moe.gate.weight");
  std::fill(host_.params.begin() + gate.offset, host_.params.begin() + gate.offset + gate.numel, 0.0f);
  backend::CudaBackend gpu(config_, *layout_, Options());
  gpu.Upload(host_);
  model::MixtralCpu cpu(config_, *layout_);
  const auto mb = Micro(0, 1);
  const auto cpu_loss = cpu.Forward(host_.params.data(), mb);
  const auto gpu_loss = gpu.Forward(mb);
  const auto counts = gpu.ExpertCounts();
  ASSERT_EQ(counts, cpu.ExpertCounts());
  for (int64_t e = config_.num_experts_per_tok; e < config_.num_local_experts; ++e) EXPECT_EQ(counts[0][e], 0);
  EXPECT_NEAR(gpu_loss.total, cpu_loss.total, 1e-5 * cpu_loss.total);
  std::vector<float> cpu_grads(layout_->total(), 0.0f);
  cpu.Backward(host_.params.data(), cpu_grads.data(), 1.0f);
  gpu.ZeroGrads();
  gpu.Backward(1.0f);
  const auto grads = gpu.DownloadGrads();
  ExpectGradsClose(grads, cpu_grads, 1e-3);
  const auto& w1 = *layout_->Find("model.layers.0.block_sparse_moe.experts.5.w1.weight");
  for (int64_t i = 0; i < w1.numel; ++i) ASSERT_EQ(grads[w1.offset + i], 0.0f);
}

#if defined(HETERMOE_CUDA_EMULATOR)
// The host's view of a step: once the micro-batch's ids are on the device,
// the layers' launches follow each other without a host wait (the router's
// plan reaches the expert GEMMs on the device, kernels/grouped_gemm.cuh)
// until the head reads the loss; backward waits only once, at the head,
// for the aux loss's gradient it uploads.
TEST_F(BackendTest, LayersLaunchWithoutWaitingForTheHost) {
  for (const std::string& precision : {std::string("fp32"), std::string("bf16")}) {
    SCOPED_TRACE(precision);
    backend::CudaBackend gpu(config_, *layout_, Options(precision));
    gpu.Upload(host_);
    const auto mb = Micro(0, 1);
    gpu.Forward(mb);  // allocations and first-use checks out of the way
    gpu.ZeroGrads();
    gpu.Backward(1.0f);
    emulator::RecordHostTimeline(true);
    gpu.Forward(mb);
    const auto forward = emulator::TakeHostTimeline();
    gpu.ZeroGrads();
    gpu.Backward(1.0f);
    const auto backward = emulator::TakeHostTimeline();
    emulator::RecordHostTimeline(false);
    auto waits_between = [](const std::vector<std::string>& t, const std::string& from, const std::string& to) {
      auto begin = std::find_if(t.begin(), t.end(), [&](const auto& e) { return e.find(from) != std::string::npos; });
      auto end = std::find_if(begin, t.end(), [&](const auto& e) { return e.find(to) != std::string::npos; });
      EXPECT_NE(begin, t.end()) << "no launch of " << from;
      EXPECT_NE(end, t.end()) << "no launch of " << to << " after " << from;
      std::vector<std::string> waits;
      for (auto it = begin; it != end; ++it)
        if (it->rfind("wait ", 0) == 0) waits.push_back(*it);
      return waits;
    };
    // From layer 0's first RMSNorm to the cross-entropy: all L layers.
    const auto in_forward = waits_between(forward, "RmsNormForward", "CrossEntropyForward");
    EXPECT_TRUE(in_forward.empty()) << in_forward.size() << " host waits inside the layers' forward, first: "
                                    << in_forward.front();
    // From the last layer's combine backward to the embedding's gradient.
    const auto in_backward = waits_between(backward, "CombineBackward", "EmbeddingSegmentSum");
    EXPECT_TRUE(in_backward.empty()) << in_backward.size() << " host waits inside the layers' backward, first: "
                                     << in_backward.front();
    size_t launches = 0;
    for (const auto& e : forward) launches += e.rfind("launch ", 0) == 0;
    std::printf("%s: forward %zu launches, %zu host waits (%zu in the layers)\n", precision.c_str(), launches,
                forward.size() - launches, in_forward.size());
  }
}
#endif

TEST_F(BackendTest, TrainingStepsMatchCpuBackend) {
  backend::CudaBackend gpu(config_, *layout_, Options());
  backend::CpuBackend cpu(config_, *layout_, optim::AdamWOptions{});
  gpu.Upload(host_);
  cpu.Upload(host_);
  for (int step = 0; step < 3; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    gpu.ZeroGrads();
    cpu.ZeroGrads();
    for (int64_t j = 0; j < 2; ++j) {  // two micro-batches, as the loop runs them
      const auto g = gpu.ForwardBackward(Micro(j, 2), 0.5f);
      const auto c = cpu.ForwardBackward(Micro(j, 2), 0.5f);
      EXPECT_NEAR(g.total, c.total, 1e-5 * c.total);
      ASSERT_EQ(gpu.ExpertCounts(), cpu.ExpertCounts());
    }
    const double gn = gpu.ClipGradNorm(0.5), cn = cpu.ClipGradNorm(0.5);
    EXPECT_NEAR(gn, cn, 1e-4 * cn);
    gpu.OptimizerStep(1e-3);
    cpu.OptimizerStep(1e-3);
  }
  backend::HostState g, c;
  gpu.Download(&g);
  cpu.Download(&c);
  EXPECT_EQ(g.optimizer_step, 3);
  EXPECT_EQ(c.optimizer_step, 3);
  ExpectClose(g.params, c.params, 0, 1e-4, "parameters after 3 steps");
  ExpectClose(g.exp_avg, c.exp_avg, 1e-2, 1e-6, "exp_avg after 3 steps");
}

TEST_F(BackendTest, MixedPrecisionStepIsCloseToFp32) {
  const std::string precision = Sm() >= 80 ? "bf16" : "fp16";
  SCOPED_TRACE(precision);
  backend::CudaBackend gpu(config_, *layout_, Options(precision));
  gpu.Upload(host_);
  model::MixtralCpu cpu(config_, *layout_);
  const auto mb = Micro(0, 1);
  const auto cpu_loss = cpu.Forward(host_.params.data(), mb);
  std::vector<float> cpu_grads(layout_->total(), 0.0f);
  cpu.Backward(host_.params.data(), cpu_grads.data(), 1.0f);

  gpu.ZeroGrads();
  const auto loss = gpu.ForwardBackward(mb, 1.0f);
  EXPECT_NEAR(loss.total, cpu_loss.total, 2e-2 * cpu_loss.total);
  const double norm = gpu.ClipGradNorm(0.0);  // unscales fp16 gradients
  ASSERT_TRUE(std::isfinite(norm));
  const auto grads = gpu.DownloadGrads();
  double err = 0, ref = 0;
  for (size_t i = 0; i < grads.size(); ++i) {
    err += (double{grads[i]} - cpu_grads[i]) * (double{grads[i]} - cpu_grads[i]);
    ref += double{cpu_grads[i]} * cpu_grads[i];
  }
  EXPECT_LT(std::sqrt(err / ref), 5e-2) << "relative L2 error of the gradient";
  gpu.OptimizerStep(1e-3);
  EXPECT_EQ(gpu.skipped_steps(), 0);
}

// --- device selection: runs with or without a GPU ---

TEST(DeviceSelection, CudaWithoutGpuIsAClearErrorAndAutoFallsBack) {
  std::string why;
  if (kernels::CudaDeviceCount(&why) > 0) GTEST_SKIP() << "a GPU is present; this checks the no-GPU path";
  const auto config = io::LoadMixtralConfig(std::string(HETERMOE_SOURCE_DIR) + "/examples/tiny/config.json");
  const model::ParameterLayout layout(config);
  backend::BackendOptions o;
  o.device = "cuda";
  try {
    backend::MakeBackend(config, layout, o);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no usable GPU"), std::string::npos) << e.what();
  }
  o.device = "auto";
  EXPECT_EQ(backend::MakeBackend(config, layout, o)->name(), "cpu");
}

TEST(DeviceSelection, AutoPicksCudaWhenAGpuIsPresent) {
  std::string why;
  if (kernels::CudaDeviceCount(&why) == 0) GTEST_SKIP() << "no usable CUDA device: " << why;
  const auto config = io::LoadMixtralConfig(std::string(HETERMOE_SOURCE_DIR) + "/examples/tiny/config.json");
  const model::ParameterLayout layout(config);
  backend::BackendOptions o;
  o.device = "auto";
  EXPECT_EQ(backend::MakeBackend(config, layout, o)->name().rfind("cuda", 0), 0u);
}

}  // namespace
}  // namespace hetermoe
