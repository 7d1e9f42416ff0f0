// The model's compute as the distributed engine drives it, on whichever
// device a rank has: the stages of one micro-batch on an attention rank, and
// the expert work of an owner rank, over parameters and gradients the device
// keeps. The CPU implementation (cpu_stages.h) is model::MixtralCpu and
// ops::Experts* over the engine's host buffers; the CUDA one
// (backend/cuda_stages.cu, in the CUDA plugin) keeps parameters, gradients
// and activations on the GPU and copies only what crosses ranks.
//
// What crosses ranks is on the host, fp32, rows grouped by expert as the
// micro-batch's DispatchPlan says (the format every device supports); a GPU
// device can instead keep the rows on the device and move them with its
// RowExchange (NCCL, device to device, 16-bit on the wire in 16-bit runs).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "trainer/model/mixtral.h"
#include "trainer/ops/experts.h"

namespace hetermoe::model {

// A span of a device's parameter, gradient or moment buffers: elements, in
// its layout's order.
struct BufferRange {
  int64_t offset = 0, count = 0;
};

// Gradients summed across ranks on the devices (GPUs over NCCL): in place,
// over the ranges, the same sum on every member afterwards. Made by a
// StageDevice from an id one member made and handed to the others.
class GradReducer {
 public:
  virtual ~GradReducer() = default;
  // Starts the sums after the compute enqueued so far and returns; they run
  // beside later compute (which must not touch these gradients). Every
  // member posts the same ranges in the same order.
  virtual void Post(const std::vector<BufferRange>& ranges) = 0;
  // Blocks until everything posted is summed (a dead peer: an error).
  virtual void Wait() = 0;
  // Sums n floats of device memory in place, now (blocking), after what
  // was posted before.
  virtual void SumInPlace(float* device_data, int64_t n) = 0;
  void Sum(const std::vector<BufferRange>& ranges) {
    Post(ranges);
    Wait();
  }
};

// The rows of one layer (a micro-batch's, or an expert block's) on a GPU,
// [rows, d] fp32 each: dispatched inputs, expert outputs, output grads,
// input grads. Device pointers; null on devices without them.
struct DeviceRows {
  float* xp = nullptr;
  float* y = nullptr;
  float* dy = nullptr;
  float* dxp = nullptr;
};

// Rows moved device to device: the distributed engine's NCCL transport,
// made by a GPU StageDevice. One communicator per channel (kind of row
// traffic) over the group's ranks, so each channel's messages match in the
// order they are posted: every rank posts a channel's groups in the same
// order (the schedule's order of (layer, micro-batch)), each group with all
// of that rank's sends and receives of it, so no rank waits on a peer that
// waits on it. Row pointers are DeviceRows; index lists are on the host.
class RowExchange {
 public:
  // kRelayRows / kRelaySums: node-level dedup's second hop inside a node
  // (a node's first expert rank to the others, and their sums back).
  enum Channel { kRows = 0, kOutputs = 1, kOutputGrads = 2, kInputGrads = 3, kRelayRows = 4, kRelaySums = 5 };
  static constexpr int kChannels = 6;
  struct Send {
    int peer = 0;                 // rank in the group
    const float* rows = nullptr;  // device
    int64_t count = 0;            // rows on the wire
    std::vector<int32_t> pick;    // wire row u = rows[pick[u]] (empty: rows[u])
    // Or, when sum_start is set: wire row u = the sum of rows[sum_rows[j]]
    // for j in [sum_start[u], sum_start[u + 1]), in that order.
    std::vector<int32_t> sum_start, sum_rows;
  };
  struct Recv {
    int peer = 0;
    int64_t count = 0;          // rows on the wire
    float* rows = nullptr;      // device, n rows written
    int64_t n = 0;
    std::vector<int32_t> index;  // rows[i] = wire[index[i]] (empty: wire[i], n == count)
    bool first_only = false;     // rows that are not the first of their index value get zeros
  };
  virtual ~RowExchange() = default;
  virtual std::string wire_format() const = 0;  // fp32 | bf16 | fp16
  virtual size_t wire_value_bytes() const = 0;
  // Posts one group on channel c: packs the sends after the compute enqueued
  // so far and starts every send and receive together. A send to this rank
  // itself is a device copy (post its receive in the same group). Returns
  // the group's handle.
  virtual int64_t Post(Channel c, std::vector<Send> sends, std::vector<Recv> recvs) = 0;
  // Blocks until group g's transfers are complete, then unpacks its
  // receives into their rows, in order before any compute enqueued later; a
  // dead or silent peer is a hetermoe::RetryableError naming it after the
  // timeout. The group's device buffers are released then; waiting for a
  // group again returns at once.
  virtual void Wait(int64_t group) = 0;
  // Blocks until everything posted is complete, and frees the wire buffers.
  virtual void WaitAll() = 0;
};

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

  // GPU devices: with host rows off, the rows stay on the device (a
  // RowExchange moves them) and the host vectors above are not used; the
  // plan's token_of_row is still filled.
  virtual void SetHostRows(bool on) { (void)on; }
  virtual DeviceRows device_rows(int64_t layer) {
    (void)layer;
    return {};
  }
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

  // GPU devices, for a RowExchange: sizes the block for `plan` and returns
  // its device rows; fill xp before ForwardOnDevice (which fills y), dy
  // before BackwardOnDevice (which fills dxp).
  virtual DeviceRows PrepareOnDevice(int64_t layer, const ops::DispatchPlan& plan, int64_t first, int64_t count);
  // GPU devices: scratch rows on the device ([rows, d] at .xp; the other
  // pointers null), no expert work: a node relay's buffer. A later call may
  // move it.
  virtual DeviceRows RowsOnDevice(int64_t rows);
  virtual void ForwardOnDevice();
  virtual void BackwardOnDevice();
};

// Which expert (original index) each slot of each layer holds, [l][slot],
// after HierMoE's expert swap relabelled experts (trainer/parallel/
// expert_swap.cc); empty = every slot its own. The stages need it only for
// the aux loss, which Mixtral sums per expert index over every layer.
using ExpertOrder = std::vector<std::vector<int32_t>>;

// A rank's device: its copy of the parameters and gradients (laid out as
// ParameterLayout), and the stage objects that compute with them.
class StageDevice {
 public:
  virtual ~StageDevice() = default;
  // The order the micro-batches made by this device use from their next
  // step on (they share it).
  void SetExpertOrder(const ExpertOrder& order) { *expert_order_ = order; }
  virtual std::string name() const = 0;
  virtual std::string precision() const { return "fp32"; }  // as Backend::precision
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

  // train.recompute experts: expert blocks made from now on keep only their
  // input rows after Forward and recompute the experts' activations in
  // Backward (the same values, so the same training): an expert rank holds
  // activations for one block at a time, for one more expert forward each.
  void SetRecomputeExperts(bool on) { recompute_experts_ = on; }
  bool recompute_experts() const { return recompute_experts_; }
  // train.recompute attention: micro-batches made from now on keep of each
  // layer only its input, the router's outputs and the rows, and compute the
  // attention block again before its backward (the same values): an
  // attention rank holds the attention block's activations of one layer of
  // one micro-batch at a time, for one more attention forward per layer.
  void SetRecomputeAttention(bool on) { recompute_attention_ = on; }
  bool recompute_attention() const { return recompute_attention_; }

  // The NCCL transport, where the device has one (else nullptr and ""):
  // one id per channel, made by one rank with NewExchangeId and handed to
  // the group's others; `rank` and `size` are the group's.
  virtual bool HasRowExchange() const { return false; }
  virtual std::string NewExchangeId() { return ""; }
  virtual size_t NewExchangeIdBytes() const { return 0; }
  virtual std::unique_ptr<RowExchange> NewRowExchange(const std::vector<std::string>& ids, int rank, int size,
                                                      std::chrono::milliseconds timeout) {
    (void)ids, (void)rank, (void)size, (void)timeout;
    return nullptr;
  }

  // The optimizer on the device (GPU devices with a RowExchange): the
  // engine then keeps the step there, gradients summed across ranks by
  // GradReducers, norm, clipping and AdamW on the device, and fills its host
  // buffers from the device only for checkpoints. Buffers below are laid out
  // as the device's layout.
  virtual bool HasOptimizer() const { return false; }
  virtual void SetState(const float* params, const float* exp_avg, const float* exp_avg_sq, int64_t step);
  virtual void GetState(float* params, float* exp_avg, float* exp_avg_sq);
  virtual std::unique_ptr<GradReducer> NewGradReducer(const std::string& id, int rank, int size,
                                                      std::chrono::milliseconds timeout);
  // The sum of the squares of the gradients in `ranges` (inf or nan when one
  // is not finite).
  virtual double GradSquares(const std::vector<BufferRange>& ranges);
  virtual void ScaleGrads(float factor);
  // One AdamW step of every tensor with moments (the AdamW options the
  // device was made with).
  virtual void AdamWStep(double lr);
  // ZeRO-1: moments only for the tensors with with_moments[i] (per tensor of
  // the device's layout), packed in layout order as optim::AdamW packs them
  // (SetState/GetState move them so); AdamWStep updates only those. Call
  // before SetState.
  virtual void SetMomentTensors(const std::vector<bool>& with_moments);
  // ZeRO-1: the parameters in `ranges` made every member's through
  // `reducer`: ranges with mine[i] carry this rank's update, the others
  // contribute zeros. Collective over the reducer's members.
  virtual void SumParameterShards(GradReducer* reducer, const std::vector<BufferRange>& ranges,
                                  const std::vector<bool>& mine);

 protected:
  bool recompute_experts_ = false;
  bool recompute_attention_ = false;

 protected:
  std::shared_ptr<ExpertOrder> expert_order_ = std::make_shared<ExpertOrder>();
};

}  // namespace hetermoe::model
