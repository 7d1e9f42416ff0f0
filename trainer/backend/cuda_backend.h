// The CUDA backend: the Mixtral forward/backward of model/mixtral.cc on one
// GPU, op for op with the kernels of kernels/ and cuBLAS, and AdamW on the
// device. The CPU backend (cpu_backend.h) is its reference; the GPU tests
// (tests/kernels) compare the two on a full training step.
//
// Everything runs on one compute stream in program order. The host waits
// for the device only where it must: after each layer's dispatch plan (the
// grouped expert GEMMs take the token counts from the host), for the loss at
// the end of a forward pass, and for the gradient norm.
//
// Precision (BackendOptions::precision, kernels/precision.h): fp32 master
// weights, gradients and AdamW state always; in bf16/fp16 mode every GEMM
// reads 16-bit copies of its operands (weights re-cast after each optimizer
// step, activations cast on the fly) and accumulates in fp32, and fp16 adds
// dynamic loss scaling (a step with non-finite gradients is skipped). The
// other ops (norms, attention, router, softmax) stay fp32.
//
// Uses the current CUDA device of the constructing thread. Not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "trainer/backend/backend.h"

namespace hetermoe::backend {

class CudaBackend final : public MicroBatchBackend {
 public:
  // Throws hetermoe::Error when no GPU is usable or the precision is not
  // supported by the device.
  CudaBackend(const io::MixtralConfig& config, const model::ParameterLayout& layout,
              const BackendOptions& options);
  ~CudaBackend() override;

  std::string name() const override;
  std::string precision() const override;
  void Upload(const HostState& state) override;
  void Download(HostState* state) override;
  void ZeroGrads() override;
  model::LossParts ForwardBackward(const model::MicroBatch& batch, float loss_scale) override;
  std::vector<std::vector<int64_t>> ExpertCounts() const override;
  double ClipGradNorm(double max_norm) override;
  void OptimizerStep(double lr) override;

  // ForwardBackward in its two halves, as model::MixtralCpu has them (tests
  // look at the logits in between): Backward must follow Forward.
  model::LossParts Forward(const model::MicroBatch& batch);
  void Backward(float loss_scale);

  // For tests: the gradient buffer (layout.total() floats), and the logits
  // [N, V] of the last Forward (Backward overwrites them with their gradient).
  std::vector<float> DownloadGrads();
  std::vector<float> DownloadLogits();
  // Steps skipped by fp16 loss scaling so far (0 in fp32/bf16 mode).
  int64_t skipped_steps() const;
  double LossScale() const override;
  int64_t SkippedSteps() const override { return skipped_steps(); }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

std::unique_ptr<Backend> MakeCudaBackend(const io::MixtralConfig& config,
                                         const model::ParameterLayout& layout,
                                         const BackendOptions& options);

}  // namespace hetermoe::backend
