// Start-up profiling for Asym-EA `auto`: the per-micro-batch times Algorithm 1
// needs, measured on the rank's own device (its CPU or GPU: the StageDevice
// the run trains on, holding parameters set by the caller), with the
// heterogeneity emulation applied, on random tokens of the run's shape.
//   T_A  attention + router of one micro-batch on an attention rank
//   T_EE all of an expert rank's experts of a layer, on the rows one
//        micro-batch slot brings (from all M attention ranks)
//   T_EA one expert on an attention rank, on the same rows per expert
#pragma once

#include <cstdint>

#include "common/mixtral_config.h"
#include "trainer/model/parameters.h"
#include "trainer/model/stages.h"

namespace hetermoe::parallel {

struct LayerTimes {
  double attention_seconds = 0;          // T_A
  double expert_rank_seconds = 0;        // T_EE
  double offloaded_expert_seconds = 0;   // T_EA
};

// Attention-rank side: T_A and T_EA (times `attention_factor` / `experts_factor`).
LayerTimes ProfileAttentionRank(model::StageDevice& device, const io::MixtralConfig& config,
                                int64_t micro_batch, int64_t seq_len, int attention_ranks,
                                double attention_factor, double experts_factor);
// Expert-rank side: T_EE for `experts_held` experts.
LayerTimes ProfileExpertRank(model::StageDevice& device, const io::MixtralConfig& config,
                             int64_t micro_batch, int64_t seq_len, int attention_ranks,
                             int64_t experts_held, double experts_factor);

}  // namespace hetermoe::parallel
