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

#include "common/mixtral_config.h"
#include "trainer/model/mixtral.h"
#include "trainer/model/parameters.h"
#include "trainer/model/stages.h"
#include "trainer/optim/adamw.h"

namespace hetermoe::backend {

// One optimizer step's worth of tokens: the global batch of G sequences, to
// be split into R micro-batches of G / R sequences.
struct StepInput {
  const int32_t* inputs;   // [G * T]
  const int32_t* targets;  // [G * T]
  int64_t global_batch;
  int64_t seq_len;
  int64_t micro_batches;
};

struct StepLoss {
  double loss = 0, ce = 0, aux = 0;                 // means over micro-batches
  std::vector<std::vector<int64_t>> expert_tokens;  // [L][E] over the step
  // Distributed runs: idle share of the step per role, and time spent
  // waiting on the dispatch and combine channels (seconds, summed over ranks).
  bool has_parallel_stats = false;
  double bubble_attention = 0, bubble_expert = 0;
  double dispatch_wait_seconds = 0, combine_wait_seconds = 0;
  double exchange_bytes = 0;  // sent between attention ranks and owners (both ways, all ranks)
  // Distributed runs, per layer over the step (all ranks): the rows sent to
  // expert owners for the routed (token, expert) rows (one per token and
  // owner with parallel.dedup), and max / mean of the routed rows over the
  // ranks holding the layer's experts.
  std::vector<double> dispatch_rows_sent, expert_load_imbalance;
  // Per layer: of dispatch_rows_sent, the rows sent to another node; and the
  // rows relayed inside a node by node-level dedup (its second hop).
  std::vector<double> dispatch_rows_inter_node, dispatch_rows_relayed;
  // Per layer: the dedup depth this step ran (0 off, 1 rank, 2 node; in
  // between with parallel.dedup auto: 1 + the share of blocks at node level).
  std::vector<double> dedup_depth;
  std::string dedup_relay_level = "node";  // what 2 means: node, or switch (parallel.dedup switch)
  std::vector<int64_t> rank_state_bytes;  // per rank: parameters, gradients and AdamW moments it holds
};

struct HostState {
  std::vector<float> params, exp_avg, exp_avg_sq;  // each layout.total() floats
  int64_t optimizer_step = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // The GEMM operand format the run computes in, "auto" resolved: fp32 |
  // bf16 | fp16 (the CPU: fp32). output.dtype auto follows it.
  virtual std::string precision() const { return "fp32"; }
  // The sequences of a global batch of G, in R micro-batches, this process
  // computes with (its micro-batches'); empty means all. The trainer reads
  // only these from the token files.
  virtual std::vector<bool> SequencesUsed(int64_t global_batch, int64_t micro_batches) const {
    (void)global_batch, (void)micro_batches;
    return {};
  }

  virtual void Upload(const HostState& state) = 0;
  virtual void Download(HostState* state) = 0;

  // Zeroes the gradients and accumulates those of the whole step (every
  // micro-batch, loss scale 1/R): one process runs the micro-batches in turn
  // (MicroBatchBackend), a distributed backend schedules them across ranks.
  virtual StepLoss ComputeGradients(const StepInput& step) = 0;
  // The loss of a batch, the model and the optimizer unchanged (validation).
  // It runs the step's forward and backward: the gradients it leaves are
  // overwritten by the next ComputeGradients, so call it between steps.
  virtual StepLoss Evaluate(const StepInput& step) { return ComputeGradients(step); }
  // Global-norm clipping (max_norm 0 = off); returns the norm before clipping.
  virtual double ClipGradNorm(double max_norm) = 0;
  virtual void OptimizerStep(double lr) = 0;
  // fp16 dynamic loss scaling: the scale the last ComputeGradients ran with
  // (1 = none), and the optimizer steps skipped for an overflow so far.
  virtual double LossScale() const { return 1.0; }
  virtual int64_t SkippedSteps() const { return 0; }
};

// A backend that holds the whole model in one process and runs a step as its
// micro-batches one after another (the CPU and CUDA backends).
class MicroBatchBackend : public Backend {
 public:
  StepLoss ComputeGradients(const StepInput& step) override;
  // The micro-batches' forward passes only (Forward).
  StepLoss Evaluate(const StepInput& step) override;

  virtual void ZeroGrads() = 0;
  // Forward and backward of one micro-batch; gradients of loss_scale * loss
  // are added to the backend's gradient buffer. Token ids live on the host.
  virtual model::LossParts ForwardBackward(const model::MicroBatch& batch, float loss_scale) = 0;
  // The loss of one micro-batch, gradients untouched. By default a forward
  // and backward whose gradients the next step's ZeroGrads drops.
  virtual model::LossParts Forward(const model::MicroBatch& batch) { return ForwardBackward(batch, 1.0f); }
  // (token, slot) assignments per [layer][expert] of the last micro-batch.
  virtual std::vector<std::vector<int64_t>> ExpertCounts() const = 0;
};

struct BackendOptions {
  std::string device = "cpu";  // cpu | cuda | auto
  optim::AdamWOptions adamw;
  // GEMM operand format on a GPU (kernels/precision.h): fp32 | bf16 | fp16 |
  // auto (bf16 on sm_80+, fp16 with dynamic loss scaling on sm_70/75).
  // The CPU backend always runs fp32.
  std::string precision = "fp32";
  double loss_scale_init = 65536.0;  // fp16: the first loss scale (dynamic scaling moves it)
};

// Makes the backend for options.device ("auto" = cuda when a GPU is usable,
// else cpu). Throws hetermoe::Error when "cuda" is asked for and unavailable.
std::unique_ptr<Backend> MakeBackend(const io::MixtralConfig& config,
                                     const model::ParameterLayout& layout,
                                     const BackendOptions& options);

// The distributed engine's device, chosen as MakeBackend chooses: the CPU
// one computes in `params`/`grads` (the engine's host buffers), a GPU one
// keeps its own copies.
std::unique_ptr<model::StageDevice> MakeStageDevice(const io::MixtralConfig& config,
                                                    const model::ParameterLayout& layout,
                                                    const BackendOptions& options, float* params, float* grads);

}  // namespace hetermoe::backend
