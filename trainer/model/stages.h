// The model's compute as the distributed engine drives it, on whichever
// device a rank has: the stages of one micro-batch on an attention rank, and
// the expert work of an owner rank, over parameters and gradients the device
// keeps. The CPU implementation (cpu_stages.h) is model::MixtralCpu and
// ops::Experts* over the engine's host buffers; the CUDA one
// (backend/cuda_stages.cu, in the CUDA plugin) keeps parameters, gradients
// and activations on the GPU and copies only what crosses ranks.
//
// What crosses ranks is always on the host, fp32, rows grouped by expert as
// the micro-batch's DispatchPlan says (the format every GPU kind supports).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "trainer/model/mixtral.h"
#include "trainer/ops/experts.h"

namespace hetermoe::model {

// One micro-batch on an attention rank; the same stage order as MixtralCpu.
class MicroBatchStages {
 public:
  virtual ~MicroBatchStages() = default;
  virtual void EmbedForward(const MicroBatch& batch) = 0;
  // Ends with dispatched(layer) filled on the host.
  virtual void AttentionForward(int64_t layer) = 0;
  // Reads expert_outputs(layer) from the host.
  virtual void CombineForward(int64_t layer) = 0;
  virtual LossParts HeadForward() = 0;
  virtual void HeadBackward(float loss_scale) = 0;
  // Ends with expert_output_grads(layer) filled on the host.
  virtual void CombineBackward(int64_t layer) = 0;
  // Reads dispatched_grads(layer) from the host.
  virtual void AttentionBackward(int64_t layer) = 0;
  virtual void EmbedBackward() = 0;

  // Counts and offsets per expert, and each row's source token (host), after
  // AttentionForward(layer).
  virtual const ops::DispatchPlan& plan(int64_t layer) const = 0;
  virtual std::vector<float>& dispatched(int64_t layer) = 0;           // [A, d]
  virtual std::vector<float>& expert_outputs(int64_t layer) = 0;       // [A, d]
  virtual std::vector<float>& expert_output_grads(int64_t layer) = 0;  // [A, d]
  virtual std::vector<float>& dispatched_grads(int64_t layer) = 0;     // [A, d]
  virtual std::vector<std::vector<int64_t>> ExpertCounts() const = 0;
};

// The expert work of one (layer, micro-batch, source rank) block on an owner
// rank: experts [first, first + count) of `layer` over rows grouped as
// `plan` says (counts zero outside the range).
class ExpertBlock {
 public:
  virtual ~ExpertBlock() = default;
  // xp: [rows, d] on the host; returns y [rows, d] on the host.
  virtual const float* Forward(int64_t layer, const ops::DispatchPlan& plan, int64_t first, int64_t count,
                               const float* xp) = 0;
  // dy: [rows, d] on the host; returns dxp [rows, d] on the host, and adds
  // the experts' weight gradients into the device's gradients.
  virtual const float* Backward(const float* dy) = 0;
};

// A rank's device: its copy of the parameters and gradients (laid out as
// ParameterLayout), and the stage objects that compute with them.
class StageDevice {
 public:
  virtual ~StageDevice() = default;
  virtual std::string name() const = 0;
  virtual std::unique_ptr<MicroBatchStages> NewMicroBatch() = 0;
  virtual std::unique_ptr<ExpertBlock> NewExpertBlock() = 0;
  // Copies the listed tensors (indices into layout.tensors()) of the host
  // parameters to the device.
  virtual void SetParams(const float* host_params, const std::vector<size_t>& tensors) = 0;
  virtual void ZeroGrads() = 0;
  // Copies the device's gradients into host_grads (layout.total() floats).
  virtual void GetGrads(float* host_grads) = 0;
  // Dynamic loss scaling (fp16): whether the device scales the loss (and so
  // needs each step's overflow verdict), and the factor HeadBackward
  // multiplies the loss by, so gradients come out scaled by it.
  virtual bool ScalesLoss() const { return false; }
  virtual double LossScale() const { return 1.0; }
  // Call once per step, on every rank alike, with whether any rank found a
  // non-finite gradient; returns whether the step is applied (with loss
  // scaling: skipped on overflow and the scale backed off). Throws after
  // too many overflows in a row.
  virtual bool UpdateLossScale(bool found_nonfinite) {
    (void)found_nonfinite;
    return true;
  }
};

}  // namespace hetermoe::model
