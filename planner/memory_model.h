// Memory model: does a ZP group (or an EP rank) fit, and how far can Asym-EA
// move experts? Gives HeterMoE's n_min and n_max.
//
// Training state is mixed precision with AdamW: fp16 weight + fp16 gradient
// + fp32 master weight + two fp32 moments = 16 bytes per parameter. An
// attention rank holds the expert-less model's state and the activations of
// all its sequences for every layer (zebra runs the forward breadth-first
// over micro-batches, so every micro-batch's activations live until its
// backward), one micro-batch's LM-head logits, and the dispatch/combine
// buffers allocated up front per micro-batch. An expert rank holds its
// experts' state and the activations of the tokens routed to them over the
// whole step. Routing is assumed uniform (every expert gets n-th of the
// token-expert assignments) [inferred: the planner has no routing data].
//
//   n_max = experts (state + activations) one attention rank can take on top
//           of its own needs;
//   n_min = experts one expert rank must shed to fit.
// Both count experts summed over layers, per rank. Measured profiles may
// override the state bytes of one expert and of the expert-less model.
#pragma once

#include <string>

#include "planner/gpu_profiles.h"
#include "planner/model_shape.h"

namespace hetermoe::planner {

inline constexpr double kStateBytesPerParam = 16;

// What a kernel can allocate: the capacity less the CUDA context and
// library workspaces (~1 GiB) and allocator fragmentation (~8%) [inferred].
double UsableBytes(const GpuProfile& gpu);

double AttentionActivationBytesPerToken(const ModelShape& shape);  // per layer
double AttentionKeptBytesPerToken(const ModelShape& shape);        // per layer, attention recomputed
double ExpertActivationBytesPerToken(const ModelShape& shape);     // per token-expert assignment
double HeadActivationBytesPerToken(const ModelShape& shape);       // logits and their gradient

struct ZpMemoryInputs {
  const ModelShape* model = nullptr;
  int64_t seq_len = 0;
  int sequences_per_attention_rank = 0;  // S
  int micro_batches = 1;                  // R (S / R sequences per micro-batch)
  // Micro-batches whose activations are alive at once: R under zebra (the
  // forward runs breadth-first), 1 when each micro-batch finishes its
  // backward before the next starts (sequential, gradient accumulation).
  int micro_batches_in_flight = 0;        // 0 = R
  int attention_ranks = 0;                // M
  int expert_ranks = 0;                   // N
  // ZeRO-1: the expert-less model's AdamW moments (8 of its 16 bytes per
  // parameter) sharded over this many attention ranks (every group's); 1 = none.
  int optimizer_shards = 1;
  // train.recompute: attention ranks keep of each layer only its input, the
  // expert outputs and the router's probabilities (one layer of one
  // micro-batch whole, the set recomputed into); expert ranks only their
  // input rows (one block's activations whole).
  bool recompute_attention = false, recompute_experts = false;
  const GpuProfile* attention_gpu = nullptr;
  const GpuProfile* expert_gpu = nullptr;
  const MeasuredProfile* attention_measured = nullptr;  // may be null
  const MeasuredProfile* expert_measured = nullptr;     // may be null
};

struct ZpMemory {
  std::string attention_kind, expert_kind;
  double attention_usable = 0;
  double attention_base = 0;            // expert-less state + activations + buffers
  double expert_usable = 0;
  double expert_base = 0;               // buffers
  double expert_on_attention_rank = 0;  // one offloaded expert: state + its tokens' activations
  double expert_on_expert_rank = 0;
  double attention_state = 0;           // the expert-less model's parameters + optimizer state
  double expert_state = 0;              // one expert's parameters + optimizer state (expert rank's kind)
  int experts_per_expert_rank = 0;      // over all layers, before Asym-EA
  int n_min = 0;
  int n_max = 0;

  bool AttentionFits() const { return attention_base <= attention_usable; }
  // Empty when the group fits, with Asym-EA moving experts if `asym_ea`;
  // otherwise one line saying what does not fit and by how much.
  std::string Problem(bool asym_ea, int n1, int n2) const;
};

ZpMemory ZpMemoryModel(const ZpMemoryInputs& in);

// Bytes one EP rank needs when `ranks` ranks share the experts and each runs
// micro-batches of `micro_batch_sequences` sequences. `layers` and `head` let
// a pipeline stage ask about its part of the model.
double EpRankBytes(const ModelShape& shape, int64_t seq_len, double micro_batch_sequences, int ranks,
                   int layers, bool embeddings_and_head, double in_flight_micro_batches);

std::string GiB(double bytes);  // "12.3 GiB", for messages

}  // namespace hetermoe::planner
