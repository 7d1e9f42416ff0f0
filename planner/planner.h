// The planner: from a cluster inventory, a model, a sequence length and a
// global batch to a ZP plan (which GPUs are attention ranks and which expert
// ranks, the group shape M:N, the micro-batch count R, the Asym-EA offload
// per layer) with predicted speed and the baselines' predictions.
//
// Search, in order:
//  1. Roles. GPU kinds are ranked by how much cheaper attention is for them
//     relative to experts (expert time / attention time for one sequence);
//     every split of that ranking into attention kinds (front) and expert
//     kinds (back) is tried. A cluster of one kind splits that kind.
//  2. Classes. Attention and expert kinds are paired front to front, each
//     attention GPU taking the expert GPUs that balance its work, until one
//     side runs out; what remains joins the last pair.
//  3. Shapes. For each pair every M:N (M up to kMaxAttentionRanks, N up to
//     the experts per layer) is priced with a bottleneck estimate that
//     assumes Asym-EA's balancing; the best few are simulated (zebra) for
//     every R and with and without Asym-EA; shapes that do not fit in
//     memory are dropped (n_min / n_max).
//  4. Budget. A GPU budget, if given, keeps the groups with the best
//     throughput per GPU.
//  5. Batch. The global batch is split between classes to minimize the
//     slowest class's simulated step (binary search on the step time), whole
//     sequences per attention rank; groups the batch does not need are
//     released (reported as unused GPUs).
// The role split with the highest tokens/s wins; baselines are predicted on
// the GPUs the plan uses.
// Throws hetermoe::Error with a one-line reason when no plan exists (the
// model does not fit, too few GPUs, impossible budget, bad numbers).
// MakePlan is pure (no I/O, no globals): concurrent calls are safe.
#pragma once

#include <cstdint>

#include "planner/gpu_profiles.h"
#include "planner/inventory.h"
#include "planner/model_shape.h"
#include "planner/plan.h"

namespace hetermoe::planner {

inline constexpr int kMaxAttentionRanks = 64;  // per group; larger groups gain nothing in the model

struct PlanRequest {
  Inventory inventory;
  ModelShape model;
  int64_t seq_len = 0;
  int64_t global_batch = 0;    // sequences per step
  int gpu_budget = 0;          // most GPUs to use; 0 = all
  bool asym_ea = true;         // allow Asym-EA
  int max_micro_batches = 64;  // upper bound on R
  bool baselines = true;       // also predict EP, DistEP, EP-Ideal, PP
};

Plan MakePlan(const PlanRequest& request, const GpuProfileTable& profiles);

}  // namespace hetermoe::planner
