// Byte counts for the memory model (see memory_model.h).
#include "planner/memory_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "planner/cost_model.h"

namespace hetermoe::planner {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr double kReservedBytes = 1.0 * kGiB;
constexpr double kFragmentation = 0.08;

double ExpertStateBytes(const ModelShape& shape, const MeasuredProfile* measured) {
  if (measured != nullptr && measured->expert_bytes > 0) return measured->expert_bytes;
  return kStateBytesPerParam * shape.ExpertParams();
}

double ExpertlessStateBytes(const ModelShape& shape, const MeasuredProfile* measured) {
  if (measured != nullptr && measured->expertless_model_bytes > 0) return measured->expertless_model_bytes;
  return kStateBytesPerParam * shape.ExpertlessParams();
}

}  // namespace

double UsableBytes(const GpuProfile& gpu) {
  return gpu.memory_gib * kGiB * (1.0 - kFragmentation) - kReservedBytes;
}

double AttentionActivationBytesPerToken(const ModelShape& s) {
  const double d = static_cast<double>(s.hidden);
  const double q = static_cast<double>(s.heads * s.head_dim);
  const double kv = static_cast<double>(s.kv_heads * s.head_dim);
  // Kept for backward: layer input, input-norm output, q/k/v, attention
  // output, post-attention residual, post-norm output, the k expert outputs
  // (the gate's gradient needs them), in fp16; softmax statistics and router
  // probabilities in fp32.
  return kActivationBytes * (4.0 * d + q + 2.0 * kv + q + static_cast<double>(s.top_k) * d) +
         4.0 * static_cast<double>(s.heads) + 4.0 * static_cast<double>(s.experts);
}

double AttentionKeptBytesPerToken(const ModelShape& s) {
  // The layer input and the k expert outputs in fp16, router probabilities in fp32.
  const double d = static_cast<double>(s.hidden);
  return kActivationBytes * (1.0 + static_cast<double>(s.top_k)) * d + 4.0 * static_cast<double>(s.experts);
}

double ExpertActivationBytesPerToken(const ModelShape& s) {
  // The expert's input, w1 and w3 outputs and their SiLU product.
  return kActivationBytes * (static_cast<double>(s.hidden) + 3.0 * static_cast<double>(s.ffn));
}

double HeadActivationBytesPerToken(const ModelShape& s) {
  // fp16 logits plus their fp32 gradient, for one micro-batch at a time.
  return 6.0 * static_cast<double>(s.vocab);
}

ZpMemory ZpMemoryModel(const ZpMemoryInputs& in) {
  const ModelShape& s = *in.model;
  const double T = static_cast<double>(in.seq_len);
  const double S = in.sequences_per_attention_rank;
  const double R = std::max(1, in.micro_batches);
  const double live = in.micro_batches_in_flight > 0 ? std::min<double>(in.micro_batches_in_flight, R) / R : 1.0;
  const double M = in.attention_ranks, N = in.expert_ranks;
  const double n = static_cast<double>(s.experts), L = static_cast<double>(s.layers);
  const double k = static_cast<double>(s.top_k);

  ZpMemory out;
  out.attention_kind = in.attention_gpu->kind;
  out.expert_kind = in.expert_gpu->kind;
  out.attention_usable = UsableBytes(*in.attention_gpu);
  out.expert_usable = UsableBytes(*in.expert_gpu);

  const double tokens = S * T;  // per attention rank per step
  const double dispatch_buffers = 2.0 * DispatchBytesPerToken(s) * tokens;  // send + receive, every micro-batch
  // ZeRO-1: a rank keeps 1/shards of the expert-less model's two moments.
  const double shards = std::max(1, in.optimizer_shards);
  const double expertless_state = ExpertlessStateBytes(s, in.attention_measured) * (0.5 + 0.5 / shards);
  const double micro_tokens = (S / R) * T;  // one micro-batch
  const double attention_activations =
      in.recompute_attention ? live * L * tokens * AttentionKeptBytesPerToken(s) +
                                   micro_tokens * AttentionActivationBytesPerToken(s)
                             : live * L * tokens * AttentionActivationBytesPerToken(s);
  out.attention_base = expertless_state + attention_activations + micro_tokens * HeadActivationBytesPerToken(s) +
                       dispatch_buffers;
  // An expert rank receives from M attention ranks, split over N expert
  // ranks; recomputing, it holds one block's expert activations at a time
  // (at most a micro-batch's routed rows).
  const double input_row = kActivationBytes * static_cast<double>(s.hidden);
  out.expert_base = dispatch_buffers * M / N +
                    (in.recompute_experts ? micro_tokens * k * (ExpertActivationBytesPerToken(s) - input_row) : 0.0);

  // Token-expert assignments one expert sees over the step (uniform routing).
  const double tokens_per_expert = M * tokens * k / n;
  const double activations =
      live * tokens_per_expert * (in.recompute_experts ? input_row : ExpertActivationBytesPerToken(s));
  out.expert_on_attention_rank = ExpertStateBytes(s, in.attention_measured) + activations;
  out.expert_on_expert_rank = ExpertStateBytes(s, in.expert_measured) + activations;
  out.attention_state = expertless_state;
  out.expert_state = ExpertStateBytes(s, in.expert_measured);

  out.experts_per_expert_rank = static_cast<int>(L) * ((s.experts + in.expert_ranks - 1) / in.expert_ranks);
  const double expert_room = std::max(0.0, out.expert_usable - out.expert_base);
  const int expert_capacity = static_cast<int>(std::floor(expert_room / out.expert_on_expert_rank));
  out.n_min = std::max(0, out.experts_per_expert_rank - expert_capacity);
  const double attention_room = std::max(0.0, out.attention_usable - out.attention_base);
  out.n_max = static_cast<int>(std::min(std::floor(attention_room / out.expert_on_attention_rank), 1e9));
  return out;
}

std::string ZpMemory::Problem(bool asym_ea, int n1, int n2) const {
  if (!AttentionFits()) {
    return "an attention rank (" + attention_kind + ") needs " + GiB(attention_base) + " of " +
           GiB(attention_usable) + " usable for the expert-less model and its activations";
  }
  if (n_min == 0) return "";
  const std::string need = "an expert rank (" + expert_kind + ") holds " + std::to_string(experts_per_expert_rank) +
                           " experts but has room for " + std::to_string(experts_per_expert_rank - n_min);
  if (!asym_ea || n1 <= 0 || n2 <= 0) return need;
  const int must_move = (n_min + n2 - 1) / n2;
  const int can_move = n_max / n1;
  if (must_move > can_move) {
    return need + ", and the attention ranks (" + attention_kind + ") can take only " + std::to_string(n_max) +
           " each";
  }
  return "";
}

double EpRankBytes(const ModelShape& s, int64_t seq_len, double micro_batch_sequences, int ranks, int layers,
                   bool embeddings_and_head, double in_flight_micro_batches) {
  const double T = static_cast<double>(seq_len);
  const double L = layers;
  const double d = static_cast<double>(s.hidden);
  const double experts_here = std::ceil(L * static_cast<double>(s.experts) / std::max(1, ranks));
  double params = L * s.AttentionParamsPerLayer() + experts_here * s.ExpertParams();
  if (embeddings_and_head) params += 2.0 * static_cast<double>(s.vocab) * d + d;
  const double tokens = micro_batch_sequences * T;
  const double activations =
      in_flight_micro_batches * L * tokens *
      (AttentionActivationBytesPerToken(s) + static_cast<double>(s.top_k) * ExpertActivationBytesPerToken(s));
  const double head = embeddings_and_head ? tokens * HeadActivationBytesPerToken(s) : 0;
  return kStateBytesPerParam * params + activations + head + 2.0 * DispatchBytesPerToken(s) * tokens;
}

std::string GiB(double bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f GiB", bytes / kGiB);
  return text;
}

}  // namespace hetermoe::planner
