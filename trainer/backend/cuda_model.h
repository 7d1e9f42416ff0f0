// The Mixtral model on one GPU, split as model::MixtralCpu is: a DeviceModel
// (parameters, gradients, optimizer state, the stream and cuBLAS, the
// precision policy) shared by DeviceMicroBatch objects, each holding one
// micro-batch's activations and running its stages. CudaBackend
// (cuda_backend.cu) runs one micro-batch through every stage with all
// experts local; the CUDA StageDevice (cuda_stages.cu) lets the distributed
// engine run the stages of several micro-batches, and expert blocks, with
// the cross-rank rows exchanged through host buffers.
//
// Notation as model/mixtral.cc: B sequences of T tokens, N = B*T; d hidden,
// H/KV heads of width hd, E experts with top-k routing and width f, V
// vocabulary, A = N*k (token, slot) assignments.
//
// Everything runs on the model's one stream in program order; the host
// waits only where it needs device values (the dispatch plan's counts, the
// loss, the gradient norm, rows that leave the rank).
//
// Host code, compiled by nvcc (or the emulator) because the kernel headers
// declare __global__ functions. Not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/mixtral_config.h"
#include "kernels/caching_allocator.h"
#include "kernels/gemm.h"
#include "kernels/grouped_gemm.cuh"
#include "kernels/precision.h"
#include "kernels/stream.h"
#include "trainer/backend/backend.h"
#include "trainer/model/mixtral.h"
#include "trainer/model/parameters.h"
#include "trainer/model/stages.h"

namespace hetermoe::kernels {
struct AttentionDims;
}  // namespace hetermoe::kernels

namespace hetermoe::backend {

class DeviceModel {
 public:
  // Throws hetermoe::Error when no GPU is usable or the precision is not
  // supported by the device. Uses the calling thread's current device.
  DeviceModel(const io::MixtralConfig& config, const model::ParameterLayout& layout, const BackendOptions& options);
  ~DeviceModel();

  const io::MixtralConfig config;
  const model::ParameterLayout& layout;
  const BackendOptions options;
  int device = 0, sm = 0;
  std::string device_name;
  kernels::PrecisionPolicy policy;
  kernels::CachingAllocator allocator;
  std::unique_ptr<kernels::Stream> stream;
  std::unique_ptr<kernels::BlasHandle> blas;
  std::unique_ptr<kernels::ExpertGemms> experts;

  kernels::DeviceBuffer<float> params, grads, exp_avg, exp_avg_sq;  // fp32 master state, layout order
  kernels::DeviceBuffer<uint16_t> params16;                         // bf16/fp16 copy for the GEMMs
  kernels::DeviceBuffer<uint16_t> cast[3];                          // activation operands in 16 bits
  kernels::DeviceBuffer<float> dg1, dg3;                            // expert scratch [A, f] (see ExpertRows)
  kernels::DeviceBuffer<float> norm_sums, embed_sums;               // RmsNormWorkspace, EmbeddingWorkspace
  kernels::DeviceBuffer<double> prob_sums;                          // ProbSumsWorkspace
  kernels::DeviceBuffer<int32_t> plan_ints;                         // DispatchWorkspace
  int64_t optimizer_step = 0;
  kernels::DynamicLossScaler scaler;

  cudaStream_t s() const { return stream->get(); }
  std::string Describe() const;  // "cuda:0 (A100, sm_80, bf16)"

  // GEMM operands in the compute format: weight tensor at `offset`; an fp32
  // activation [n] as an operand (cast into scratch `slot` unless fp32);
  // element `elem` of such an operand.
  const void* Weight(int64_t offset) const;
  const void* Operand(const float* x, int64_t n, int slot);
  // Whether GEMM operands are 16-bit (bf16/fp16): activations that backward
  // reads only as GEMM operands are then kept in 16 bits, the values the
  // GEMMs would have cast them to (the same results, half the bytes).
  bool Compute16() const { return policy.compute != kernels::ComputeDtype::kFp32; }
  // Whether attention runs on tensor cores (kernels/flash_attention.cuh:
  // bf16/fp16 runs on sm_80+, head dims a multiple of 16 up to 128) or in the
  // fp32 kernels (kernels/attention.cuh).
  bool FlashAttention(const kernels::AttentionDims& dims) const;
  // x [n] (fp32) into out [n] in the compute format (16-bit runs).
  void CastTo16(const float* x, int64_t n, uint16_t* out);
  const void* At(const void* base, int64_t elem) const;
  // Re-casts the 16-bit weight copy after the fp32 parameters changed.
  void RefreshCompute16();

  void Linear(int64_t M, int64_t N, int64_t K, const float* x, int64_t w_offset, float* y, bool accumulate,
              int slot = 0);
  void LinearDx(int64_t M, int64_t N, int64_t K, const float* dy, int64_t w_offset, float* dx, bool accumulate);
  void LinearDw(int64_t M, int64_t N, int64_t K, const float* dy, const float* x, int64_t g_offset);
  // The same with the activation x already an operand (Operand, or kept 16-bit).
  void LinearOp(int64_t M, int64_t N, int64_t K, const void* x_op, int64_t w_offset, float* y, bool accumulate);
  void LinearDwOp(int64_t M, int64_t N, int64_t K, const float* dy, const void* x_op, int64_t g_offset);

  // Workspace of the column sums over tokens (kernels/column_sums.cuh), in
  // stream order: the RMSNorm weight gradient's ([N, d]), the router's
  // probability sums' ([N, E]). Null when none is needed.
  float* RmsNormWorkspace(int64_t N, int64_t d);
  float* EmbeddingWorkspace(int64_t floats);  // the embedding backward's partial sums
  int32_t* DispatchWorkspace(int64_t N, int64_t k, int64_t E);  // the dispatch plan's tile counts
  double* ProbSumsWorkspace(int64_t N, int64_t E);

  // Uploads / downloads host vectors, waiting for the copy.
  void ToDevice(const float* host, float* device_ptr, int64_t n);
  void ToHost(const float* device_ptr, float* host, int64_t n);
};

// Experts [first, first + count) of one layer over rows grouped by expert
// (counts/offsets on the host, zero outside the range): xp [rows, d] in,
// y [rows, d] out, with g1, g3, act [rows, f] kept for backward (act in 16
// bits, act16, when the GEMMs are: backward reads it only as their
// operand); backward takes dy and writes dxp, adding the experts' weight
// gradients. The micro-batch uses one per layer (xp/y/dy/dxp always; the
// expert activations only when it runs experts itself); an owner rank one
// per block.
//
// The row counts are on the host (counts/offsets: an owner rank's, whose
// exchange the host sized; the GEMMs are cuBLAS's grouped ones), or stay on
// the device (device_offsets, [E + 1] absolute rows, with total_rows their
// sum: a micro-batch running its own experts, kernels/grouped_gemm.cuh), so
// the router's plan reaches the GEMMs without a stream sync.
struct ExpertRows {
  kernels::DeviceBuffer<float> xp, y, dy, dxp, g1, g3, act;
  kernels::DeviceBuffer<uint16_t> act16;
  std::vector<int64_t> counts, offsets;
  const int32_t* device_offsets = nullptr;
  int64_t total_rows = 0;
  int64_t layer = 0, first = 0, count = 0;

  void Bind(DeviceModel& m);
  void Resize(DeviceModel& m, int64_t rows, bool expert_activations);
  // Frees the expert activations (recompute: Resize brings them back).
  void ReleaseActivations();
  void Forward(DeviceModel& m);
  void Backward(DeviceModel& m);

 private:
  int64_t Rows() const { return device_offsets != nullptr ? total_rows : offsets.back(); }
  // One product over the range's experts (kernels/gemm.h's shapes) with
  // weight (or weight gradient) `w` of each expert; `x` is the rows' second
  // operand of kBackwardWeight.
  void Product(DeviceModel& m, kernels::GroupedProduct product, int64_t N, int64_t K, const void* a, const void* x,
               int64_t model::ExpertOffsets::*w, float* c, bool accumulate);
};

// One layer's attention-block activations, as model::MixtralCpu's: the
// normed inputs a (attention) and m (MoE), q/k/v after RoPE, the attention
// output and its log-sum-exp, the residual after attention. With 16-bit
// GEMMs a and m are kept only as the 16-bit operands backward reads (a16,
// m16).
struct AttentionActivations {
  kernels::DeviceBuffer<float> a, rstd1, q, k, v, attn, lse, h_mid, m, rstd2;
  kernels::DeviceBuffer<uint16_t> a16, m16;
};

class DeviceMicroBatch {
 public:
  explicit DeviceMicroBatch(DeviceModel& model);
  ~DeviceMicroBatch();

  // train.recompute attention (as model::MixtralCpu::RecomputeAttention):
  // each layer keeps its input, the router's outputs and the rows; the
  // attention block's activations live in `shared`, which any number of
  // micro-batches of this model may share (their stages run in order on
  // its one stream), and are computed again before each layer's backward.
  // Call before the first EmbedForward.
  void RecomputeAttention(std::shared_ptr<AttentionActivations> shared);
  // The experts' original indices by slot (model::ExpertOrder; null or
  // empty = identity): the aux loss sums per original expert.
  void SetExpertOrder(std::shared_ptr<const std::vector<std::vector<int32_t>>> order);

  // The stages, as model::MixtralCpu has them.
  void EmbedForward(const model::MicroBatch& batch);
  void AttentionForward(int64_t layer);  // through the dispatch gather (xp)
  void ExpertsForward(int64_t layer);    // every expert, locally
  void CombineForward(int64_t layer);
  model::LossParts HeadForward();
  void HeadBackward(float loss_scale);
  void CombineBackward(int64_t layer);
  void ExpertsBackward(int64_t layer);  // every expert, locally
  void AttentionBackward(int64_t layer);
  void EmbedBackward();

  // The rows that cross ranks (layer l, [A, d]): dispatched inputs (with
  // each row's source token; host null: the tokens only) and output grads
  // out to the host, expert outputs and input grads in; or the device rows
  // themselves, for a transport that moves them on the device.
  void DownloadDispatched(int64_t layer, float* host, std::vector<int64_t>* token_of_row);
  model::DeviceRows Rows(int64_t layer);
  void UploadExpertOutputs(int64_t layer, const float* host);
  void DownloadOutputGrads(int64_t layer, float* host);
  void UploadDispatchedGrads(int64_t layer, const float* host);

  const std::vector<int64_t>& counts(int64_t layer) const;   // [E]
  const std::vector<int64_t>& offsets(int64_t layer) const;  // [E+1]
  std::vector<std::vector<int64_t>> ExpertCounts() const;
  int64_t tokens() const;
  // For tests: the logits [N, V] of the last HeadForward (HeadBackward
  // overwrites them with their gradient).
  std::vector<float> DownloadLogits();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace hetermoe::backend
