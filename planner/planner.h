// The planner: from a cluster inventory, a model, a sequence length and a
// global batch to a ZP plan (which GPUs are attention ranks and which expert
// ranks, the group shape M:N, the micro-batch count R, the Asym-EA offload
// per layer) with predicted speed and the baselines' predictions.
//
// The plan is what the engine runs: identical ZP groups of M attention ranks
// of one GPU kind and N expert ranks of one kind (experts partitioned over
// the N), the global batch split evenly over the attention ranks. Every such
// shape the inventory allows is a candidate (search.h): kinds in either
// role (one kind in both), M, N, the number of groups (data parallelism),
// R and the Asym-EA offload, transfers priced by where the groups sit
// (inside a machine or across NICs). The planner's branch and bound finds
// the fastest predicted step, exactly as the exhaustive enumeration does;
// ties go to fewer GPUs. Baselines are predicted on all the inventory's GPUs
// (on the plan's own under a GPU budget).
// Throws hetermoe::Error with a one-line reason when no plan exists (the
// model does not fit, too few GPUs, impossible budget, bad numbers).
// MakePlan is pure (no I/O, no globals): concurrent calls are safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "planner/gpu_profiles.h"
#include "planner/inventory.h"
#include "planner/links_json.h"
#include "planner/model_shape.h"
#include "planner/plan.h"

namespace hetermoe::planner {

inline constexpr int kMaxAttentionRanks = 64;  // per group; larger groups gain nothing in the model

enum class SearchMode {
  kBranchAndBound,  // the planner's: prices shapes in lower-bound order, stops when none can win
  kExhaustive,      // prices every shape (the truth the tests compare against)
};

struct PlanRequest {
  Inventory inventory;
  ModelShape model;
  int64_t seq_len = 0;
  int64_t global_batch = 0;    // sequences per step
  int gpu_budget = 0;          // most GPUs to use; 0 = all
  bool asym_ea = true;         // allow Asym-EA
  int max_micro_batches = 64;  // upper bound on R
  bool baselines = true;       // also predict EP, DistEP, EP-Ideal, PP
  // Only shapes with these attention : expert ranks per group (0 = any) and
  // this many groups (0 = any): to price a shape someone chose.
  int attention_ranks = 0;
  int expert_ranks = 0;
  int groups = 0;
  // What the engine will run with, so memory is priced as it will be used:
  // parallel.micro_batches_in_flight (zebra in waves; 0 = all R) and
  // train.zero (1: the dense AdamW moments sharded over every attention rank)
  // and train.recompute.
  int micro_batches_in_flight = 0;
  bool zero = false;
  // train.recompute: none | attention | experts | full (activations
  // recomputed in backward instead of kept).
  std::string recompute = "none";
  // parallel.dedup: HierMoE's token deduplication on the dispatch (the
  // forward's rows and the backward's input grads, one per token and owner
  // rank, planner/dedup.h), as the engine runs it by default.
  bool dedup = true;
  // How far up the hierarchy: rank | node | auto (node where the expert
  // machines' own links make the relay pay, as the engine's choice).
  std::string dedup_depth = "rank";
  // Links a run measured (its links.json, planner/links_json.h): they price
  // every transfer instead of the GPU profiles' and the inventory's numbers.
  std::optional<MeasuredLinks> links;
  // A run's routing, tokens per expert per layer ([layer][expert], one
  // step's expert_tokens from its metrics.jsonl; empty = uniform routing):
  // the busiest expert rank's compute and rows follow it
  // (planner/swap_forecast.h), after parallel.swap_every's swaps when
  // swap_every > 0.
  std::vector<std::vector<int64_t>> routing;
  int swap_every = 0;
};

// When nothing fits, the error names the most promising shape's memory
// problem and what would fit (a smaller global batch, more GPUs).
Plan MakePlan(const PlanRequest& request, const GpuProfileTable& profiles,
              SearchMode mode = SearchMode::kBranchAndBound);

}  // namespace hetermoe::planner
