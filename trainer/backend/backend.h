// Backend: where a training step's math runs (CPU today, CUDA when built).
//
// The training loop only talks to this interface: it hands over a
// micro-batch, asks for the gradient norm and the optimizer update, and moves
// the fp32 master state (parameters and AdamW moments, laid out as
// ParameterLayout) to and from the host for checkpoints. A backend owns its
// copy of that state; the host copy is only touched by Upload/Download.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "trainer/io/mixtral_config.h"
#include "trainer/model/mixtral.h"
#include "trainer/model/parameters.h"
#include "trainer/optim/adamw.h"

namespace hetermoe::backend {

struct HostState {
  std::vector<float> params, exp_avg, exp_avg_sq;  // each layout.total() floats
  int64_t optimizer_step = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  virtual void Upload(const HostState& state) = 0;
  virtual void Download(HostState* state) = 0;

  virtual void ZeroGrads() = 0;
  // Forward and backward of one micro-batch; gradients of loss_scale * loss
  // are added to the backend's gradient buffer. Token ids live on the host.
  virtual model::LossParts ForwardBackward(const model::MicroBatch& batch, float loss_scale) = 0;
  // (token, slot) assignments per [layer][expert] of the last micro-batch.
  virtual std::vector<std::vector<int64_t>> ExpertCounts() const = 0;
  // Global-norm clipping (max_norm 0 = off); returns the norm before clipping.
  virtual double ClipGradNorm(double max_norm) = 0;
  virtual void OptimizerStep(double lr) = 0;
};

struct BackendOptions {
  std::string device = "cpu";  // cpu | cuda | auto
  optim::AdamWOptions adamw;
};

// Makes the backend for options.device ("auto" = cuda when a GPU is usable,
// else cpu). Throws hetermoe::Error when "cuda" is asked for and unavailable.
std::unique_ptr<Backend> MakeBackend(const io::MixtralConfig& config,
                                     const model::ParameterLayout& layout,
                                     const BackendOptions& options);

}  // namespace hetermoe::backend
