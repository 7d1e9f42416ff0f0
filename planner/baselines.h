// Predictions for the systems HeterMoE is compared with, on the same GPUs
// and the same cost model:
//  - EP: DeepSpeed-MoE-style expert parallelism over every GPU. Each rank
//    runs attention on an equal share of the batch (one sequence per
//    micro-batch, gradient accumulation) and its share of the experts:
//    expert-parallel groups of min(P, n) ranks, replicated data-parallel
//    beyond that (expert gradients all-reduced across replicas); each
//    layer's all-to-all waits for every rank, so the slowest kind sets the
//    pace (simulated with the ep schedule).
//  - DistEP: the plan's own groups (attention and experts split), without
//    overlap and without Asym-EA (the sequential schedule).
//  - EP-Ideal: each GPU kind trains alone with EP; tokens/s are added. An
//    upper bound for any split of the batch between kinds.
//  - PP: heterogeneity-aware pipeline parallelism: one stage per GPU kind,
//    layers split between stages to balance them (exhaustively for up to
//    three kinds), EP inside a stage, 1F1B over micro-batches of one
//    sequence per GPU of the largest stage: (m + p - 1) * slowest stage.
// A baseline whose memory does not fit is reported infeasible with the reason.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "planner/plan.h"
#include "planner/zp_group.h"

namespace hetermoe::planner {

// GPU kind -> how many of it the baseline may use.
using GpuCounts = std::vector<std::pair<std::string, int>>;

BaselinePrediction PredictEp(const PlanningContext& ctx, const GpuCounts& gpus, int64_t global_batch);
BaselinePrediction PredictEpIdeal(const PlanningContext& ctx, const GpuCounts& gpus, int64_t global_batch);
BaselinePrediction PredictPipeline(const PlanningContext& ctx, const GpuCounts& gpus, int64_t global_batch);
// `classes` with the shapes (groups, S, R) the plan chose.
BaselinePrediction PredictDistEp(const PlanningContext& ctx, const std::vector<GroupClass>& classes,
                                 const DataParallelWorld& world, int64_t global_batch);

}  // namespace hetermoe::planner
