// Plan: what the planner decided and what it predicts. The trainer reads it
// (as JSON, plan_json.h) to set up ZP groups; the operator stores it in a
// ConfigMap; people read it as a table (plan_table.h).
//
// Groups of the same shape form a GroupClass (same GPU kinds, M:N, S, R and
// Asym-EA offload, hence the same per-layer expert placement). The engine
// runs identical groups, so the planner makes one class (`classes` keeps
// room for plans of several shapes, which JSON readers accept).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "planner/gpu_profiles.h"
#include "planner/simulator.h"
#include "planner/zp_group.h"

namespace hetermoe::planner {

struct GpuSlot {
  std::string node;
  int gpu_index = 0;
  std::string gpu;  // kind
};

// Which experts each rank of a group holds in one layer (expert ids 0..n-1).
struct LayerPlacement {
  std::vector<std::vector<int>> expert_ranks;     // N lists
  std::vector<std::vector<int>> attention_ranks;  // M lists (Asym-EA offload; usually empty)
};

struct GroupClass {
  GroupShape shape;                       // with groups, S, R and the offload chosen
  std::vector<LayerPlacement> placement;  // by layer
  AsymEaResult asym_ea;                   // Algorithm 1's inputs-derived values
  bool asym_ea_used = false;
  double step_seconds = 0;                // this class's own step (the plan's is the max)
  double attention_busy = 0;              // compute busy fraction over its own step
  double expert_busy = 0;
  ZpMemory memory;
};

struct ZpGroup {
  int group_class = 0;
  std::vector<GpuSlot> attention;
  std::vector<GpuSlot> expert;
};

struct Prediction {
  double step_seconds = 0;
  double tokens_per_second = 0;
  std::map<std::string, double> utilisation;  // GPU kind -> compute busy fraction over the step
};

struct BaselinePrediction {
  bool feasible = false;
  double step_seconds = 0;
  double tokens_per_second = 0;
  std::string note;  // how it was set up, or why it cannot run
};

struct Baselines {
  BaselinePrediction ep;        // expert parallelism over every GPU (DeepSpeed-MoE style)
  BaselinePrediction distep;    // the plan's groups, attention/expert split without overlap
  BaselinePrediction ep_ideal;  // each GPU kind trained alone with EP, throughputs added
  BaselinePrediction pp;        // heterogeneity-aware pipeline parallelism, one stage per kind
};

struct Plan {
  std::string model_source;
  ModelShape model;
  int64_t seq_len = 0;
  int64_t global_batch = 0;
  Precision precision = Precision::kFp16;
  std::vector<std::string> attention_kinds;  // GPU kinds in the attention role
  std::vector<std::string> expert_kinds;
  std::vector<GroupClass> classes;
  std::vector<ZpGroup> groups;
  std::vector<GpuSlot> unused;
  Prediction predicted;
  Baselines baselines;
  SimulationResult timeline;     // zebra step of class 0's group, with intervals
  std::vector<std::string> notes;

  // How the search got there (hetermoe-plan --explain): the next best shapes
  // (fastest first; the first is the runner-up), the most promising shapes
  // that did not fit, and how many shapes the space had and how many were
  // priced (the rest could not beat the plan: their lower bound was slower).
  std::vector<GroupEvaluation> alternatives;
  std::vector<RefusedShape> refused;
  int shapes_enumerated = 0;
  int shapes_priced = 0;
};

}  // namespace hetermoe::planner
