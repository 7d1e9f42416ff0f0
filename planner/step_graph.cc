// Task-graph builders for the zebra, sequential and EP schedules (see
// step_graph.h for the orders they encode).
#include "planner/step_graph.h"

#include <algorithm>
#include <array>

#include "common/error.h"

namespace hetermoe::planner {
namespace {

using Grid = std::vector<std::vector<int>>;  // task id by [layer][micro-batch]; -1 = none

void CheckZebraSpec(const ZebraStepSpec& spec) {
  const size_t layers = static_cast<size_t>(spec.layers);
  if (spec.layers < 1 || spec.micro_batches < 1) {
    throw Error("simulator: a step needs at least one layer and one micro-batch");
  }
  if (spec.expert_rank.size() != layers || spec.offloaded_experts.size() != layers ||
      spec.dispatch.size() != layers || spec.combine.size() != layers ||
      (!spec.dispatch_backward.empty() && spec.dispatch_backward.size() != layers) ||
      (!spec.combine_backward.empty() && spec.combine_backward.size() != layers)) {
    throw Error("simulator: per-layer durations must have one entry per layer (" + std::to_string(layers) + ")");
  }
}

// The backward's exchanges: their own durations where given, else the forward's.
double DispatchBackward(const ZebraStepSpec& spec, int l) {
  return spec.dispatch_backward.empty() ? spec.dispatch[l] : spec.dispatch_backward[l];
}
double CombineBackward(const ZebraStepSpec& spec, int l) {
  return spec.combine_backward.empty() ? spec.combine[l] : spec.combine_backward[l];
}

OpLabel Label(OpKind kind, int layer, int micro_batch, bool backward = false) {
  return {kind, layer, micro_batch, backward};
}

// The gradient all-reduces of one rank, each issued when its gradients are
// ready (`ready` lists the task each waits for, in readiness order), then
// the optimizer once the last has finished.
void AddGradientSyncAndOptimizer(StepGraph& graph, int rank, int sync_channel,
                                 const std::vector<std::pair<int, double>>& ready, double optimizer) {
  int last = -1;
  for (const auto& [task, seconds] : ready) {
    last = graph.AddTask(sync_channel, seconds, Label(OpKind::kGradientSync, -1, -1), {task});
  }
  graph.AddTask(rank, optimizer, Label(OpKind::kOptimizer, -1, -1), last >= 0 ? std::vector<int>{last} : std::vector<int>{});
}

// The resources of a ZP group's representative ranks, in this order:
// attention, expert, dispatch, combine, attention sync, expert sync.
std::array<int, 6> AddZpResources(StepGraph& g) {
  return {g.AddResource("attention", ResourceKind::kCompute), g.AddResource("expert", ResourceKind::kCompute),
          g.AddResource("dispatch", ResourceKind::kLink), g.AddResource("combine", ResourceKind::kLink),
          g.AddResource("attention_gradient_sync", ResourceKind::kLink),
          g.AddResource("expert_gradient_sync", ResourceKind::kLink)};
}

double At(const std::vector<double>& v, int i) { return v.empty() ? 0.0 : v[static_cast<size_t>(i)]; }

// Readiness order of a ZP group's gradients: the head's, then layers L..1,
// then the embedding (on the attention rank); layers L..1 on the expert rank.
void AddZpTails(StepGraph& g, const ZebraStepSpec& spec, int attention, int expert, int attention_sync,
                int expert_sync, int last_head, const std::vector<int>& last_attention_backward,
                const std::vector<int>& last_expert_backward) {
  std::vector<std::pair<int, double>> attention_ready = {{last_head, spec.attention_sync.head}};
  std::vector<std::pair<int, double>> expert_ready;
  for (int l = spec.layers - 1; l >= 0; --l) {
    attention_ready.push_back({last_attention_backward[l], spec.attention_sync.layer + At(spec.offloaded_expert_sync, l)});
    expert_ready.push_back({last_expert_backward[l], At(spec.expert_sync, l)});
  }
  attention_ready.push_back({last_attention_backward[0], spec.attention_sync.embedding});
  AddGradientSyncAndOptimizer(g, attention, attention_sync, attention_ready, spec.attention_optimizer);
  AddGradientSyncAndOptimizer(g, expert, expert_sync, expert_ready, spec.expert_optimizer);
}

}  // namespace

StepGraph BuildZebraStep(const ZebraStepSpec& spec) {
  CheckZebraSpec(spec);
  const int L = spec.layers;
  const int R = spec.micro_batches;
  StepGraph g;
  const auto [attention, expert, dispatch, combine, attention_sync, expert_sync] = AddZpResources(g);

  Grid a_fwd(L, std::vector<int>(R, -1)), ea_fwd = a_fwd, c_fwd = a_fwd;
  Grid a_bwd = a_fwd, ea_bwd = a_fwd, c_bwd = a_fwd;
  std::vector<int> d(R), e(R);

  // The inputs of layer l's attention for micro-batch j: the combined expert
  // outputs of layer l-1 from both kinds of rank.
  auto layer_output = [&](const Grid& combined, const Grid& offloaded, int l, int j) {
    std::vector<int> deps = {combined[l][j]};
    if (offloaded[l][j] >= 0) deps.push_back(offloaded[l][j]);
    return deps;
  };

  for (int l = 0; l < L; ++l) {
    const bool offload = spec.offloaded_experts[l].Total() > 0;
    for (int j = 0; j < R; ++j) {
      std::vector<int> deps = l > 0 ? layer_output(c_fwd, ea_fwd, l - 1, j) : std::vector<int>{};
      a_fwd[l][j] = g.AddTask(attention, spec.attention.forward, Label(OpKind::kAttentionForward, l, j), deps);
    }
    for (int j = 0; j < R; ++j) {
      d[j] = g.AddTask(dispatch, spec.dispatch[l], Label(OpKind::kDispatch, l, j), {a_fwd[l][j]});
    }
    for (int j = 0; j < R; ++j) {
      e[j] = g.AddTask(expert, spec.expert_rank[l].forward, Label(OpKind::kExpertForward, l, j), {d[j]});
    }
    if (offload) {
      for (int j = 0; j < R; ++j) {
        ea_fwd[l][j] = g.AddTask(attention, spec.offloaded_experts[l].forward,
                                 Label(OpKind::kOffloadedExpertForward, l, j), {d[j]});
      }
    }
    for (int j = 0; j < R; ++j) {
      c_fwd[l][j] = g.AddTask(combine, spec.combine[l], Label(OpKind::kCombine, l, j), {e[j]});
    }
  }

  std::vector<int> head(R);
  for (int j = 0; j < R; ++j) {
    head[j] = g.AddTask(attention, spec.head, Label(OpKind::kHead, -1, j), layer_output(c_fwd, ea_fwd, L - 1, j));
  }

  std::vector<int> last_expert_backward(L);
  for (int l = L - 1; l >= 0; --l) {
    const bool offload = spec.offloaded_experts[l].Total() > 0;
    for (int j = 0; j < R; ++j) {
      // The gradient of layer l's MoE output is ready once layer l+1's
      // attention backward (or the head) has run for this micro-batch.
      const int source = l == L - 1 ? head[j] : a_bwd[l + 1][j];
      d[j] = g.AddTask(dispatch, DispatchBackward(spec, l), Label(OpKind::kDispatch, l, j, true), {source});
    }
    for (int j = 0; j < R; ++j) {
      e[j] = g.AddTask(expert, spec.expert_rank[l].backward, Label(OpKind::kExpertBackward, l, j), {d[j]});
    }
    last_expert_backward[l] = e[R - 1];
    if (offload) {
      for (int j = 0; j < R; ++j) {
        ea_bwd[l][j] = g.AddTask(attention, spec.offloaded_experts[l].backward,
                                 Label(OpKind::kOffloadedExpertBackward, l, j), {d[j]});
      }
    }
    for (int j = 0; j < R; ++j) {
      c_bwd[l][j] = g.AddTask(combine, CombineBackward(spec, l), Label(OpKind::kCombine, l, j, true), {e[j]});
    }
    for (int j = 0; j < R; ++j) {
      a_bwd[l][j] = g.AddTask(attention, spec.attention.backward, Label(OpKind::kAttentionBackward, l, j),
                              layer_output(c_bwd, ea_bwd, l, j));
    }
  }

  std::vector<int> last_attention_backward(L);
  for (int l = 0; l < L; ++l) last_attention_backward[l] = a_bwd[l][R - 1];
  AddZpTails(g, spec, attention, expert, attention_sync, expert_sync, head[R - 1], last_attention_backward,
             last_expert_backward);
  return g;
}

StepGraph BuildSequentialStep(const ZebraStepSpec& spec) {
  CheckZebraSpec(spec);
  const int L = spec.layers;
  StepGraph g;
  const auto [attention, expert, dispatch, combine, attention_sync, expert_sync] = AddZpResources(g);

  // Every op waits for the one before it: nothing overlaps.
  int previous = -1;
  auto add = [&](int resource, double seconds, OpLabel label) {
    previous = g.AddTask(resource, seconds, label, previous >= 0 ? std::vector<int>{previous} : std::vector<int>{});
    return previous;
  };
  // Gradients accumulate over micro-batches: the all-reduces follow the last.
  int last_head = -1;
  std::vector<int> last_attention_backward(L), last_expert_backward(L);

  for (int j = 0; j < spec.micro_batches; ++j) {
    for (int l = 0; l < L; ++l) {
      add(attention, spec.attention.forward, Label(OpKind::kAttentionForward, l, j));
      add(dispatch, spec.dispatch[l], Label(OpKind::kDispatch, l, j));
      add(expert, spec.expert_rank[l].forward, Label(OpKind::kExpertForward, l, j));
      if (spec.offloaded_experts[l].Total() > 0) {
        add(attention, spec.offloaded_experts[l].forward, Label(OpKind::kOffloadedExpertForward, l, j));
      }
      add(combine, spec.combine[l], Label(OpKind::kCombine, l, j));
    }
    last_head = add(attention, spec.head, Label(OpKind::kHead, -1, j));
    for (int l = L - 1; l >= 0; --l) {
      add(dispatch, DispatchBackward(spec, l), Label(OpKind::kDispatch, l, j, true));
      last_expert_backward[l] = add(expert, spec.expert_rank[l].backward, Label(OpKind::kExpertBackward, l, j));
      if (spec.offloaded_experts[l].Total() > 0) {
        add(attention, spec.offloaded_experts[l].backward, Label(OpKind::kOffloadedExpertBackward, l, j));
      }
      add(combine, CombineBackward(spec, l), Label(OpKind::kCombine, l, j, true));
      last_attention_backward[l] = add(attention, spec.attention.backward, Label(OpKind::kAttentionBackward, l, j));
    }
  }
  AddZpTails(g, spec, attention, expert, attention_sync, expert_sync, last_head, last_attention_backward,
             last_expert_backward);
  return g;
}

StepGraph BuildEpStep(const EpStepSpec& spec) {
  if (spec.layers < 1 || spec.micro_batches < 1 || spec.ranks.empty()) {
    throw Error("simulator: an EP step needs a layer, a micro-batch and a rank");
  }
  for (const EpRankSpec& r : spec.ranks) {
    if (!r.experts_by_layer.empty() && r.experts_by_layer.size() != static_cast<size_t>(spec.layers)) {
      throw Error("simulator: per-layer expert durations must have one entry per layer (" +
                  std::to_string(spec.layers) + ")");
    }
  }
  auto experts = [&](size_t k, int l) -> const PassSeconds& {
    const EpRankSpec& r = spec.ranks[k];
    return r.experts_by_layer.empty() ? r.experts : r.experts_by_layer[static_cast<size_t>(l)];
  };
  const int L = spec.layers;
  const size_t K = spec.ranks.size();
  StepGraph g;
  std::vector<int> rank(K);
  for (size_t k = 0; k < K; ++k) rank[k] = g.AddResource("rank:" + spec.ranks[k].kind, ResourceKind::kCompute);
  const int all_to_all = g.AddResource("all_to_all", ResourceKind::kLink);
  const int sync = g.AddResource("gradient_sync", ResourceKind::kLink);

  std::vector<int> last(K, -1);  // each rank's latest op
  auto barrier = [&](double seconds, OpLabel label, const std::vector<int>& deps) {
    return g.AddTask(all_to_all, seconds, label, deps);
  };

  // The last micro-batch's gradient-ready points, for the all-reduces.
  std::vector<int> last_head;
  std::vector<std::vector<int>> last_backward(L);
  for (int j = 0; j < spec.micro_batches; ++j) {
    const bool final_micro_batch = j + 1 == spec.micro_batches;
    int ready = -1;  // the combine every rank waits for before its next attention
    for (int l = 0; l < L; ++l) {
      for (size_t k = 0; k < K; ++k) {
        last[k] = g.AddTask(rank[k], spec.ranks[k].attention.forward, Label(OpKind::kAttentionForward, l, j),
                            ready >= 0 ? std::vector<int>{ready} : std::vector<int>{});
      }
      const int dispatched = barrier(spec.all_to_all, Label(OpKind::kDispatch, l, j), last);
      for (size_t k = 0; k < K; ++k) {
        last[k] = g.AddTask(rank[k], experts(k, l).forward, Label(OpKind::kExpertForward, l, j), {dispatched});
      }
      ready = barrier(spec.all_to_all, Label(OpKind::kCombine, l, j), last);
    }
    for (size_t k = 0; k < K; ++k) {
      last[k] = g.AddTask(rank[k], spec.ranks[k].head, Label(OpKind::kHead, -1, j), {ready});
    }
    if (final_micro_batch) last_head = last;
    for (int l = L - 1; l >= 0; --l) {
      const int dispatched = barrier(spec.all_to_all, Label(OpKind::kDispatch, l, j, true), last);
      for (size_t k = 0; k < K; ++k) {
        last[k] = g.AddTask(rank[k], experts(k, l).backward, Label(OpKind::kExpertBackward, l, j), {dispatched});
      }
      const int gathered = barrier(spec.all_to_all, Label(OpKind::kCombine, l, j, true), last);
      for (size_t k = 0; k < K; ++k) {
        last[k] = g.AddTask(rank[k], spec.ranks[k].attention.backward, Label(OpKind::kAttentionBackward, l, j), {gathered});
      }
      if (final_micro_batch) last_backward[l] = last;
    }
  }
  // Each all-reduce spans every rank: it starts when all are ready and lasts
  // as long as the slowest rank's share.
  auto slowest = [&](double GradientSync::*part) {
    double t = 0;
    for (const EpRankSpec& r : spec.ranks) t = std::max(t, r.sync.*part);
    return t;
  };
  int synced = g.AddTask(sync, slowest(&GradientSync::head), Label(OpKind::kGradientSync, -1, -1), last_head);
  for (int l = L - 1; l >= 0; --l) {
    synced = g.AddTask(sync, slowest(&GradientSync::layer), Label(OpKind::kGradientSync, l, -1), last_backward[l]);
  }
  synced = g.AddTask(sync, slowest(&GradientSync::embedding), Label(OpKind::kGradientSync, -1, -1), last_backward[0]);
  for (size_t k = 0; k < K; ++k) {
    g.AddTask(rank[k], spec.ranks[k].optimizer, Label(OpKind::kOptimizer, -1, -1), {synced});
  }
  return g;
}

}  // namespace hetermoe::planner
