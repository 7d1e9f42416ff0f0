// The three step schedules the simulator compares, as task graphs.
//
// zebra (HeterMoE's zebra parallelism, one representative attention rank and
// expert rank of a ZP group, plus its dispatch and combine channels):
//   attention rank: A^F(1, 1..R) [EA^F(1, 1..R)] ... A^F(L, 1..R) [EA^F(L, 1..R)]
//                   H(1..R)
//                   [EA^B(L, 1..R)] A^B(L, 1..R) ... [EA^B(1, 1..R)] A^B(1, 1..R)
//   expert rank:    E^F(1, 1..R) ... E^F(L, 1..R) E^B(L, 1..R) ... E^B(1, 1..R)
//   Forward runs breadth-first over micro-batches, layer by layer, so while
//   the attention rank computes micro-batch j the expert rank computes
//   earlier ones (the stripes). H is the part after the last MoE block
//   (final norm, LM head, loss), run per micro-batch forward then backward.
//   EA are the experts Asym-EA moved onto the attention rank: they run after
//   the attention of all R micro-batches of the layer. Dispatch (attention ->
//   expert) and combine (expert -> attention) are on their own channels and
//   are issued as soon as their producer finishes. Backward into a layer's
//   attention waits for the expert gradients of both kinds to come back (the
//   gate's gradient has two branches).
// sequential (DistEP: attention and experts split, nothing overlapped): the
//   same ops, one at a time, micro-batch after micro-batch.
// ep (expert parallelism, DeepSpeed-MoE style): every rank runs attention and
//   its share of the experts; the all-to-all of each layer is a barrier
//   across all ranks, so the slowest GPU kind sets the pace. Micro-batches
//   (gradient accumulation) run one after another. Gradient all-reduces
//   follow the last micro-batch's backward layer by layer, as in zebra.
//
// Resource names are stable: "attention", "expert", "dispatch", "combine"
// for zebra/sequential; "rank:<kind>" and "all_to_all" for ep.
#pragma once

#include <string>
#include <vector>

#include "common/schedule.h"
#include "planner/cost_model.h"
#include "planner/simulator.h"

namespace hetermoe::planner {

// Data-parallel gradient all-reduce, issued as gradients become ready (as
// DDP buckets do) on the rank's own sync channel, so it overlaps the rest of
// the backward; the optimizer waits for all of it.
struct GradientSync {
  double head = 0;       // final norm + LM head, after the last head op
  double layer = 0;      // one layer's attention + gate, after its last backward op
  double embedding = 0;  // the embedding, after layer 1's last backward op
};

// Per micro-batch durations (seconds) of one ZP group's representative ranks.
struct ZebraStepSpec {
  int layers = 0;                                   // L
  int micro_batches = 0;                            // R
  PassSeconds attention;                            // A(l, j), every layer alike
  double head = 0;                                  // H(j), forward + backward
  std::vector<PassSeconds> expert_rank;             // E(l, j) by layer
  std::vector<PassSeconds> offloaded_experts;       // EA(l, j) by layer; zero = none offloaded
  std::vector<double> dispatch;                     // D(l, j) by layer, forward (and backward if the next is empty)
  std::vector<double> combine;                      // C(l, j) by layer, forward (and backward if the next is empty)
  std::vector<double> dispatch_backward;            // by layer: the output grads out; empty = dispatch
  std::vector<double> combine_backward;             // by layer: the input grads back; empty = combine
  GradientSync attention_sync;                      // expert-less model, across all attention ranks
  std::vector<double> offloaded_expert_sync;        // by layer; empty = none
  std::vector<double> expert_sync;                  // by layer, across groups; empty = none
  double attention_optimizer = 0;
  double expert_optimizer = 0;
};

StepGraph BuildZebraStep(const ZebraStepSpec& spec);
StepGraph BuildSequentialStep(const ZebraStepSpec& spec);

// One representative rank per GPU kind.
struct EpRankSpec {
  std::string kind;
  PassSeconds attention;   // per micro-batch, one layer
  PassSeconds experts;     // the rank's share of one layer's experts, per micro-batch
  double head = 0;
  GradientSync sync;       // expert-less model across all ranks (the all-reduce spans every rank)
  double optimizer = 0;
  // Optional, one per layer, replacing `experts`: routing that is uneven
  // differently in each layer gives each rank its own per-layer load, and
  // every layer's all-to-all waits for that layer's slowest rank.
  std::vector<PassSeconds> experts_by_layer;
};

struct EpStepSpec {
  int layers = 0;
  int micro_batches = 0;
  std::vector<EpRankSpec> ranks;
  double all_to_all = 0;   // one dispatch or one combine, per micro-batch and layer
};

StepGraph BuildEpStep(const EpStepSpec& spec);

}  // namespace hetermoe::planner
