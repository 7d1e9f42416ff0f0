// Cost model: how long each op of one training step takes on a GPU kind, and
// how long a message takes on a link.
//
// Compute ops are priced as
//   time = GEMM FLOPs / (peak * gemm_efficiency)
//        + attention-kernel FLOPs / (peak * attention_efficiency(T))
//        + elementwise bytes / (memory bandwidth * kMemoryBandwidthEfficiency)
// with forward FLOPs from the model shape and backward = 2x forward for GEMMs
// (input and weight gradients) and 2.5x for the attention kernel
// (FlashAttention-style backward recomputes QK^T). Elementwise traffic
// (norms, residuals, RoPE, SiLU*mul, token permutation) is a fixed number of
// d- or f-wide fp16 passes per token [inferred; small next to the GEMMs].
// Measured profiles (gpu_profiles.h), when they match the model, replace the
// formula: attention at the same sequence length is scaled by sequences, an
// expert by tokens (both are linear in them at these sizes).
//
// Links follow the alpha-beta model: time = peers * latency + bytes / bandwidth.
// Traffic that leaves a node shares the node's NIC among the GPUs of the node
// that send at the same time, and cannot exceed the GPU's own PCIe/NVLink
// bandwidth to the NIC.
//
// All functions are pure. A ComputeCostModel is immutable after construction
// (safe to share between threads) and refers to the shape, profile and
// measurement it was built from: they must outlive it.
#pragma once

#include <cstdint>
#include <vector>

#include "planner/gpu_profiles.h"
#include "planner/model_shape.h"

namespace hetermoe::planner {

// Sustained fraction of datasheet memory bandwidth for streaming kernels.
inline constexpr double kMemoryBandwidthEfficiency = 0.8;
// Bytes per activation element on the wire and in memory (fp16 or bf16).
inline constexpr double kActivationBytes = 2.0;

// Forward FLOPs and elementwise bytes, from the shape alone.
double AttentionGemmFlopsPerToken(const ModelShape& shape);   // q,k,v,o projections + gate
double AttentionKernelFlopsPerSequence(const ModelShape& shape, int64_t seq_len);  // causal QK^T and PV
double ExpertFlopsPerToken(const ModelShape& shape);          // one token through one expert
double HeadFlopsPerToken(const ModelShape& shape);            // LM head
// Bytes one token sends to its experts in a dispatch (and gets back in a combine).
double DispatchBytesPerToken(const ModelShape& shape);

struct PassSeconds {
  double forward = 0;
  double backward = 0;
  double Total() const { return forward + backward; }
};

class ComputeCostModel {
 public:
  // `measured` may be null; when set it must describe `shape` (see Matches).
  ComputeCostModel(const ModelShape& shape, const GpuProfile& gpu, Precision precision, int64_t seq_len,
                   const MeasuredProfile* measured = nullptr);
  // A pool: ranks of several kinds in one role, given equal work, keep the
  // pace of the slowest, so every op takes as long as on the slowest member.
  // `pool` (the pool's profile) and the members must outlive it.
  ComputeCostModel(const GpuProfile& pool, std::vector<const ComputeCostModel*> members);

  // Attention + gate of one layer on `sequences` sequences of seq_len tokens.
  PassSeconds Attention(double sequences) const;
  // One expert FFN on `tokens` tokens (token-expert assignments).
  PassSeconds Expert(double tokens) const;
  // Final norm, LM head and loss, forward and backward, on `sequences`.
  double Head(double sequences) const;
  // AdamW update of `params` parameters (fp32 master, two moments, fp16 copy).
  double Optimizer(double params) const;

  const GpuProfile& gpu() const { return *gpu_; }
  int64_t seq_len() const { return seq_len_; }

 private:
  const ModelShape* shape_;
  const GpuProfile* gpu_;
  double peak_flops_;
  double bytes_per_second_;
  int64_t seq_len_;
  const MeasuredProfile* measured_attention_ = nullptr;
  const MeasuredProfile* measured_expert_ = nullptr;
  std::vector<const ComputeCostModel*> members_;  // a pool's; empty for one kind
};

// The measurement in `table` for `kind` that describes `shape` (any sequence
// length), preferring one taken at `seq_len`; null if none.
const MeasuredProfile* FindMeasured(const GpuProfileTable& table, const std::string& kind,
                                    const ModelShape& shape, int64_t seq_len);

struct LinkModel {
  double latency_seconds = 0;
  double bytes_per_second = 0;

  // `peers` point-to-point messages carrying `bytes` in total from one GPU.
  double Seconds(double bytes, int peers) const;
};

// Between two GPUs of the same node.
LinkModel IntraNodeLink(const GpuProfile& gpu, double latency_us);
// From a GPU to another node, when `sharing_gpus` GPUs of its node use the
// `nic_gbps` (Gbit/s) NIC at once.
LinkModel InterNodeLink(const GpuProfile& gpu, double nic_gbps, double latency_us, int sharing_gpus);

}  // namespace hetermoe::planner
