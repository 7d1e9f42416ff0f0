// The plan search (see planner.h for the steps).
#include "planner/planner.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <numeric>
#include <set>

#include "common/error.h"
#include "planner/baselines.h"
#include "planner/search.h"
#include "planner/zp_group.h"

namespace hetermoe::planner {
namespace {

void ValidateRequest(const PlanRequest& r) {
  if (r.seq_len < 1) throw Error("seq-len " + std::to_string(r.seq_len) + " is not positive");
  if (r.global_batch < 1) throw Error("global-batch " + std::to_string(r.global_batch) + " is not positive");
  if (r.model.max_positions > 0 && r.seq_len > r.model.max_positions) {
    throw Error(r.model.source + ": max_position_embeddings " + std::to_string(r.model.max_positions) +
                " is shorter than seq-len " + std::to_string(r.seq_len));
  }
  if (r.model.layers < 1 || r.model.experts < 1 || r.model.top_k < 1 || r.model.top_k > r.model.experts) {
    throw Error(r.model.source + ": the planner needs layers >= 1 and 1 <= num_experts_per_tok <= num_local_experts");
  }
  if (r.gpu_budget < 0) throw Error("gpu-budget " + std::to_string(r.gpu_budget) + " is negative");
  if (r.gpu_budget == 1) throw Error("gpu-budget 1 is too small: a ZP group needs an attention and an expert GPU");
  if (r.max_micro_batches < 1) throw Error("max-micro-batches must be positive");
  if (r.attention_ranks < 0 || r.expert_ranks < 0 || r.groups < 0)
    throw Error("--shape and --groups take positive numbers");
  if (r.inventory.TotalGpus() < 2) {
    throw Error(r.inventory.source + ": " + std::to_string(r.inventory.TotalGpus()) +
                " GPU(s); a ZP group needs at least an attention and an expert GPU");
  }
}

// Expert ids per rank for one layer: contiguous blocks over the N expert
// ranks; Asym-EA takes the last experts of every expert rank's block and
// deals them to the attention ranks, n1 at a time.
LayerPlacement PlaceLayer(int experts, int M, int N, int offloaded) {
  LayerPlacement p;
  p.expert_ranks.resize(N);
  p.attention_ranks.resize(M);
  std::vector<int> moved;
  const int per_rank_moved = offloaded / N;  // == chunks * n2
  for (int r = 0; r < N; ++r) {
    const int begin = experts * r / N, end = experts * (r + 1) / N;
    for (int id = begin; id < end; ++id) {
      if (id >= end - per_rank_moved) {
        moved.push_back(id);
      } else {
        p.expert_ranks[r].push_back(id);
      }
    }
  }
  const int per_attention_rank = M > 0 ? offloaded / M : 0;
  for (size_t i = 0; i < moved.size(); ++i) {
    p.attention_ranks[std::min<size_t>(i / std::max(1, per_attention_rank), M - 1)].push_back(moved[i]);
  }
  return p;
}

// The GPUs of a kind or pool (on `host`, if given), in inventory order.
std::vector<GpuSlot> Slots(const PlanningContext& ctx, const std::string& kind, const std::string& host = "") {
  const std::vector<std::string>& members = ctx.Kind(kind).members;
  std::vector<GpuSlot> slots;
  for (const InventoryNode& node : ctx.inventory().nodes) {
    if (std::find(members.begin(), members.end(), node.gpu) == members.end()) continue;
    if (!host.empty() && node.Host() != host) continue;
    for (int i = 0; i < node.count; ++i) slots.push_back({node.name, i, node.gpu});
  }
  return slots;
}

// GPUs for every group of `shape`: inside one machine each when the
// machines can hold them all (as LinksOf priced them), else in inventory
// order. Returns the groups and leaves the rest in `unused`.
std::vector<ZpGroup> PlaceGroups(const PlanningContext& ctx, const GroupShape& shape, std::vector<GpuSlot>& unused) {
  std::set<std::pair<std::string, int>> taken;
  auto take = [&](std::vector<GpuSlot>& from, int count) {
    std::vector<GpuSlot> out;
    for (const GpuSlot& slot : from) {
      if (static_cast<int>(out.size()) == count) break;
      if (taken.insert({slot.node, slot.gpu_index}).second) out.push_back(slot);
    }
    return out;
  };
  std::vector<ZpGroup> groups;
  auto add = [&](std::vector<GpuSlot>& attention, std::vector<GpuSlot>& expert) {
    ZpGroup group;
    group.attention = take(attention, shape.attention_ranks);
    group.expert = take(expert, shape.expert_ranks);
    groups.push_back(std::move(group));
  };
  if (!LinksOf(ctx, shape).remote) {
    for (const auto& [host, counts] : ctx.Hosts()) {
      std::vector<GpuSlot> a = Slots(ctx, shape.attention_gpu, host);
      std::vector<GpuSlot> e = Slots(ctx, shape.expert_gpu, host);
      while (static_cast<int>(groups.size()) < shape.groups) {
        int free_a = 0, free_e = 0;
        for (const GpuSlot& slot : a) free_a += taken.count({slot.node, slot.gpu_index}) ? 0 : 1;
        for (const GpuSlot& slot : e) free_e += taken.count({slot.node, slot.gpu_index}) ? 0 : 1;
        const bool room = shape.SameKind() ? free_a >= shape.attention_ranks + shape.expert_ranks
                                           : free_a >= shape.attention_ranks && free_e >= shape.expert_ranks;
        if (!room) break;
        add(a, e);
      }
    }
  }
  std::vector<GpuSlot> a = Slots(ctx, shape.attention_gpu), e = Slots(ctx, shape.expert_gpu);
  while (static_cast<int>(groups.size()) < shape.groups) add(a, e);
  for (const std::string& kind : ctx.Kinds()) {
    for (const GpuSlot& slot : Slots(ctx, kind)) {
      if (!taken.count({slot.node, slot.gpu_index})) unused.push_back(slot);
    }
  }
  return groups;
}

Plan Assemble(const PlanningContext& ctx, const PlanRequest& request, const SearchResult& search) {
  const GroupEvaluation& best = search.fitting.front();
  const GroupShape& shape = best.shape;
  Plan plan;
  plan.model = request.model;
  plan.model_source = request.model.source;
  plan.seq_len = request.seq_len;
  plan.global_batch = request.global_batch;
  plan.precision = ctx.precision();
  plan.attention_kinds = ctx.Kind(shape.attention_gpu).members;
  plan.expert_kinds = ctx.Kind(shape.expert_gpu).members;

  const int L = static_cast<int>(request.model.layers), n = static_cast<int>(request.model.experts);
  GroupClass gc;
  gc.shape = shape;
  gc.asym_ea = best.asym_ea;
  gc.asym_ea_used = best.asym_ea_used;
  gc.step_seconds = best.step_seconds;
  gc.attention_busy = best.attention_busy;
  gc.expert_busy = best.expert_busy;
  gc.memory = best.memory;
  for (int l = 0; l < L; ++l) {
    const int offloaded = shape.offloaded.empty() ? 0 : shape.offloaded[l];
    gc.placement.push_back(PlaceLayer(n, shape.attention_ranks, shape.expert_ranks, offloaded));
  }
  plan.classes.push_back(std::move(gc));
  plan.groups = PlaceGroups(ctx, shape, plan.unused);

  plan.predicted.step_seconds = best.step_seconds;
  plan.predicted.tokens_per_second = static_cast<double>(request.global_batch * request.seq_len) / best.step_seconds;
  // Per GPU kind: a pool's members share its role's busy fraction (the
  // slowest member's; faster members idle a little more).
  std::map<std::string, double> busy_seconds, ranks;
  for (const ZpGroup& group : plan.groups) {
    for (const GpuSlot& slot : group.attention) {
      busy_seconds[slot.gpu] += best.attention_busy * best.step_seconds;
      ranks[slot.gpu] += 1;
    }
    for (const GpuSlot& slot : group.expert) {
      busy_seconds[slot.gpu] += best.expert_busy * best.step_seconds;
      ranks[slot.gpu] += 1;
    }
  }
  for (const auto& [kind, r] : ranks) plan.predicted.utilisation[kind] = busy_seconds[kind] / (best.step_seconds * r);

  const DataParallelWorld world{shape.groups * shape.attention_ranks, shape.groups};
  plan.timeline = Simulate(BuildZebraStep(GroupStepSpec(ctx, shape, world)), true);

  if (request.baselines) {
    // The baselines get every GPU the plan may use (all of them, or the
    // plan's own within a GPU budget): a plan that leaves GPUs idle competes
    // with baselines that use them.
    GpuCounts used;
    if (request.gpu_budget > 0) {
      for (const auto& [kind, r] : ranks) used.push_back({kind, static_cast<int>(r)});
    } else {
      for (const std::string& kind : ctx.Kinds()) used.push_back({kind, ctx.Kind(kind).count});
    }
    plan.baselines.ep = PredictEp(ctx, used, request.global_batch);
    plan.baselines.ep_ideal = PredictEpIdeal(ctx, used, request.global_batch);
    plan.baselines.pp = PredictPipeline(ctx, used, request.global_batch);
    plan.baselines.distep = PredictDistEp(ctx, plan.classes, world, request.global_batch);
    const BaselinePrediction& ep = plan.baselines.ep;
    if (ep.feasible && ep.tokens_per_second > plan.predicted.tokens_per_second) {
      char note[160];
      std::snprintf(note, sizeof note,
                    "expert parallelism is predicted faster here (%.0f tokens/s, %.2fx this plan): "
                    "the engine runs it as parallel.schedule ep",
                    ep.tokens_per_second, ep.tokens_per_second / plan.predicted.tokens_per_second);
      plan.notes.push_back(note);
    }
  }
  if (!plan.unused.empty()) {
    plan.notes.push_back(std::to_string(plan.unused.size()) + " GPU(s) unused: no group shape gains from them");
  }
  constexpr size_t kShown = 5;
  for (size_t i = 1; i < search.fitting.size() && plan.alternatives.size() < kShown; ++i) {
    plan.alternatives.push_back(search.fitting[i]);
  }
  for (size_t i = 0; i < search.refused.size() && plan.refused.size() < kShown; ++i) {
    plan.refused.push_back(search.refused[i]);
  }
  plan.shapes_enumerated = search.enumerated;
  plan.shapes_priced = search.priced;
  return plan;
}

PlanningContext MakeContext(const PlanRequest& request, const GpuProfileTable& profiles, Inventory& inventory) {
  ValidateRequest(request);
  inventory = request.inventory;
  ValidateInventory(inventory, profiles);
  std::vector<const GpuProfile*> kinds_used;
  for (const std::string& kind : inventory.Kinds()) kinds_used.push_back(&profiles.Find(kind));
  return PlanningContext(request.model, inventory, profiles, request.seq_len, CommonPrecision(kinds_used),
                         request.micro_batches_in_flight, request.zero, request.recompute, request.dedup,
                         request.dedup_depth, request.links, request.routing, request.swap_every > 0);
}

}  // namespace

Plan MakePlan(const PlanRequest& request, const GpuProfileTable& profiles, SearchMode mode) {
  Inventory inventory;
  const PlanningContext ctx = MakeContext(request, profiles, inventory);
  const SearchResult search = SearchShapes(ctx, request, mode);
  if (search.fitting.empty()) {
    if (search.enumerated == 0) {
      throw Error("no plan: no ZP group shape fits " + std::to_string(inventory.TotalGpus()) + " GPUs" +
                  (request.gpu_budget > 0 ? " within gpu-budget " + std::to_string(request.gpu_budget) : "") +
                  (request.attention_ranks > 0 ? " as " + std::to_string(request.attention_ranks) + ":" +
                                                     std::to_string(request.expert_ranks) + " groups"
                                               : "") +
                  (request.groups > 0 ? " in " + std::to_string(request.groups) + " group(s)" : "") +
                  " (a group needs an attention and an expert GPU, and groups x attention ranks must divide "
                  "the global batch of " + std::to_string(request.global_batch) + ")");
    }
    std::string message = "no plan: " + search.refused.front().reason;
    const std::string would = WhatWouldFit(ctx, request);
    if (!would.empty()) message += "; " + would;
    throw Error(message);
  }
  return Assemble(ctx, request, search);
}

}  // namespace hetermoe::planner
