// Op and link times (see cost_model.h for the formulas and their reasons).
#include "planner/cost_model.h"

#include <algorithm>
#include <cmath>

namespace hetermoe::planner {
namespace {

// Backward / forward FLOP ratios.
constexpr double kGemmBackward = 2.0;             // grad wrt input + grad wrt weight
constexpr double kAttentionKernelBackward = 2.5;  // dQ, dK, dV and the recomputed QK^T
// Elementwise fp16 passes per token, forward + backward [inferred]:
// attention side 36 d-wide (two RMSNorms, two residual adds, RoPE on q and k,
// router softmax/top-k); expert side 8 f-wide (SiLU * w3) + 4 d-wide
// (permute tokens to experts and back).
constexpr double kAttentionPasses = 36;
constexpr double kExpertFfnPasses = 8;
constexpr double kExpertHiddenPasses = 4;
// The LM head writes fp32 logits and reads them back for the softmax and its
// gradient: ~3 passes of 4 bytes per vocabulary entry per token.
constexpr double kHeadLogitBytes = 12;
// AdamW reads and writes the fp32 master weight, both moments and the fp16
// copy, and reads the fp16 gradient: ~36 bytes per parameter.
constexpr double kOptimizerBytesPerParam = 36;

bool SameModel(const MeasuredProfile& m, const ModelShape& shape) {
  return m.hidden_size == shape.hidden && m.intermediate_size == shape.ffn &&
         m.num_attention_heads == shape.heads && m.num_key_value_heads == shape.kv_heads &&
         m.num_local_experts == shape.experts;
}

}  // namespace

double AttentionGemmFlopsPerToken(const ModelShape& s) {
  const double d = static_cast<double>(s.hidden);
  const double q = static_cast<double>(s.heads * s.head_dim);
  const double kv = static_cast<double>(s.kv_heads * s.head_dim);
  return 2.0 * d * (q + 2.0 * kv)            // q, k, v projections
         + 2.0 * q * d                        // o projection
         + 2.0 * d * static_cast<double>(s.experts);  // gate
}

double AttentionKernelFlopsPerSequence(const ModelShape& s, int64_t seq_len) {
  // QK^T and PV each cost 2*T*T*hd per head; causal masking halves both.
  const double t = static_cast<double>(seq_len);
  return 2.0 * t * t * static_cast<double>(s.heads * s.head_dim);
}

double ExpertFlopsPerToken(const ModelShape& s) {
  return 6.0 * static_cast<double>(s.hidden) * static_cast<double>(s.ffn);  // w1, w3, w2
}

double HeadFlopsPerToken(const ModelShape& s) {
  return 2.0 * static_cast<double>(s.hidden) * static_cast<double>(s.vocab);
}

double DispatchBytesPerToken(const ModelShape& s) {
  return static_cast<double>(s.top_k) * static_cast<double>(s.hidden) * kActivationBytes;
}

ComputeCostModel::ComputeCostModel(const ModelShape& shape, const GpuProfile& gpu, Precision precision,
                                   int64_t seq_len, const MeasuredProfile* measured)
    : shape_(&shape),
      gpu_(&gpu),
      peak_flops_(gpu.PeakTflops(precision) * 1e12),
      bytes_per_second_(gpu.memory_bandwidth_gbs * 1e9 * kMemoryBandwidthEfficiency),
      seq_len_(seq_len) {
  if (measured != nullptr) {
    if (measured->seq_len == seq_len && measured->attention_forward_seconds > 0 &&
        measured->attention_sequences > 0) {
      measured_attention_ = measured;
    }
    if (measured->expert_forward_seconds > 0 && measured->expert_tokens > 0) measured_expert_ = measured;
  }
}

ComputeCostModel::ComputeCostModel(const GpuProfile& pool, std::vector<const ComputeCostModel*> members)
    : shape_(members.at(0)->shape_),
      gpu_(&pool),
      peak_flops_(0),
      bytes_per_second_(0),
      seq_len_(members.at(0)->seq_len_),
      members_(std::move(members)) {}

namespace {

template <typename F>
PassSeconds Slowest(const std::vector<const ComputeCostModel*>& members, F op) {
  PassSeconds slowest;
  for (const ComputeCostModel* m : members) {
    const PassSeconds p = op(*m);
    if (p.Total() > slowest.Total()) slowest = p;
  }
  return slowest;
}

}  // namespace

PassSeconds ComputeCostModel::Attention(double sequences) const {
  if (!members_.empty()) return Slowest(members_, [&](const ComputeCostModel& m) { return m.Attention(sequences); });
  if (measured_attention_ != nullptr) {
    const double scale = sequences / static_cast<double>(measured_attention_->attention_sequences);
    return {measured_attention_->attention_forward_seconds * scale,
            measured_attention_->attention_backward_seconds * scale};
  }
  const double tokens = sequences * static_cast<double>(seq_len_);
  const double gemm = AttentionGemmFlopsPerToken(*shape_) * tokens / (peak_flops_ * gpu_->gemm_efficiency);
  const double kernel = AttentionKernelFlopsPerSequence(*shape_, seq_len_) * sequences /
                        (peak_flops_ * gpu_->attention_efficiency.At(seq_len_));
  const double elementwise =
      kAttentionPasses * static_cast<double>(shape_->hidden) * kActivationBytes * tokens / bytes_per_second_;
  return {gemm + kernel + elementwise / 3.0,
          kGemmBackward * gemm + kAttentionKernelBackward * kernel + elementwise * 2.0 / 3.0};
}

PassSeconds ComputeCostModel::Expert(double tokens) const {
  if (!members_.empty()) return Slowest(members_, [&](const ComputeCostModel& m) { return m.Expert(tokens); });
  if (measured_expert_ != nullptr) {
    const double scale = tokens / static_cast<double>(measured_expert_->expert_tokens);
    return {measured_expert_->expert_forward_seconds * scale, measured_expert_->expert_backward_seconds * scale};
  }
  const double gemm = ExpertFlopsPerToken(*shape_) * tokens / (peak_flops_ * gpu_->gemm_efficiency);
  const double elementwise = (kExpertFfnPasses * static_cast<double>(shape_->ffn) +
                              kExpertHiddenPasses * static_cast<double>(shape_->hidden)) *
                             kActivationBytes * tokens / bytes_per_second_;
  return {gemm + elementwise / 3.0, kGemmBackward * gemm + elementwise * 2.0 / 3.0};
}

double ComputeCostModel::Head(double sequences) const {
  if (!members_.empty()) {
    return Slowest(members_, [&](const ComputeCostModel& m) { return PassSeconds{m.Head(sequences), 0}; }).forward;
  }
  const double tokens = sequences * static_cast<double>(seq_len_);
  const double gemm = (1.0 + kGemmBackward) * HeadFlopsPerToken(*shape_) * tokens / (peak_flops_ * gpu_->gemm_efficiency);
  const double logits = kHeadLogitBytes * static_cast<double>(shape_->vocab) * tokens / bytes_per_second_;
  return gemm + logits;
}

double ComputeCostModel::Optimizer(double params) const {
  if (!members_.empty()) {
    return Slowest(members_, [&](const ComputeCostModel& m) { return PassSeconds{m.Optimizer(params), 0}; }).forward;
  }
  return kOptimizerBytesPerParam * params / bytes_per_second_;
}

const MeasuredProfile* FindMeasured(const GpuProfileTable& table, const std::string& kind, const ModelShape& shape,
                                    int64_t seq_len) {
  const MeasuredProfile* best = nullptr;
  for (const MeasuredProfile& m : table.Measured(kind)) {
    if (!SameModel(m, shape)) continue;
    if (best == nullptr || (m.seq_len == seq_len && best->seq_len != seq_len)) best = &m;
  }
  return best;
}

double LinkModel::Seconds(double bytes, int peers) const {
  if (bytes <= 0 || peers <= 0) return 0;
  return static_cast<double>(peers) * latency_seconds + bytes / bytes_per_second;
}

LinkModel IntraNodeLink(const GpuProfile& gpu, double latency_us) {
  return {latency_us * 1e-6, gpu.intra_node_gbs * 1e9};
}

LinkModel InterNodeLink(const GpuProfile& gpu, double nic_gbps, double latency_us, int sharing_gpus) {
  const double nic_share = nic_gbps * 1e9 / 8.0 / static_cast<double>(std::max(1, sharing_gpus));
  return {latency_us * 1e-6, std::min(nic_share, gpu.intra_node_gbs * 1e9)};
}

}  // namespace hetermoe::planner
