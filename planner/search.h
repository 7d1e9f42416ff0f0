// The plan search space and its two searches.
//
// A plan is what the engine runs: G identical ZP groups, each of M attention
// ranks of one GPU kind and N expert ranks of one kind (the same kind in both
// roles is allowed), the experts of every layer partitioned over the N
// expert ranks (expert parallelism inside the group), the global batch split
// evenly: every attention rank takes S = global_batch / (groups x M) whole
// sequences as R micro-batches, and Asym-EA may move experts onto the
// attention ranks. A *shape candidate* fixes the kinds, M, N, the groups and
// S; pricing it (EvaluateGroup) chooses R and the offload.
//
// Two searches over the same candidates, cost and memory models:
//  - exhaustive: prices every candidate. The truth, for clusters small
//    enough (tests, `hetermoe-plan --exhaustive`).
//  - branch and bound (the planner's): a lower bound on each candidate's
//    step, from the compute its busiest rank cannot avoid (attention, head
//    and optimizer on an attention rank; its share of the experts on an
//    expert rank, with Asym-EA's best possible balance when it is allowed),
//    orders the candidates; they are priced in that order until the next
//    bound is no better than the best step found. Every op's time is linear
//    in the tokens it processes and each rank runs its ops one at a time, so
//    the bound never exceeds the simulated step (a test checks it on every
//    candidate) and the result is the exhaustive optimum.
// Ties in step time (within 1e-9) go to fewer GPUs, then to enumeration order,
// so the same input gives the same plan.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "planner/planner.h"
#include "planner/zp_group.h"

namespace hetermoe::planner {

struct ShapeCandidate {
  GroupShape shape;        // kinds, M, N, groups, S; R = 1, no offload
  double lower_bound = 0;  // seconds; never above the priced step
};

// Every shape the engine can run on the inventory within the request's GPU
// budget, with lower bounds, in enumeration order (kind pair, M, N, groups).
std::vector<ShapeCandidate> EnumerateShapes(const PlanningContext& ctx, const PlanRequest& request);

double StepLowerBound(const PlanningContext& ctx, const GroupShape& shape, bool allow_asym_ea);

struct SearchResult {
  std::vector<GroupEvaluation> fitting;  // priced candidates that fit, fastest first
  std::vector<RefusedShape> refused;     // priced candidates that do not fit, best bound first
  int enumerated = 0;                    // candidates in the space
  int priced = 0;                        // candidates priced (the rest were pruned by their bound)
};

SearchResult SearchShapes(const PlanningContext& ctx, const PlanRequest& request, SearchMode mode);

// Better in the search's order: faster, then fewer GPUs.
bool BetterEvaluation(const GroupEvaluation& x, const GroupEvaluation& y);

// What would fit when nothing does, one line: the largest global batch the
// inventory can train, and the GPUs the requested batch needs (memory model
// only). Empty when neither exists within the search space's limits.
std::string WhatWouldFit(const PlanningContext& ctx, const PlanRequest& request);

}  // namespace hetermoe::planner
