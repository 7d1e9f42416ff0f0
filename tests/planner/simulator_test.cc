// The discrete-event simulator and the three schedules, including HeterMoE's
// worked example of zebra parallelism and Asym-EA. Its predictions against
// measured runs of the distributed engine are bench/validate_simulator.py
// (timed, so a benchmark run on demand, not a test).
#include "planner/simulator.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "common/error.h"
#include "planner/step_graph.h"

namespace hetermoe::planner {
namespace {

// HeterMoE's worked example: an attention GPU takes 3 time units per
// micro-batch; the expert GPU is 33% slower, 4 units for its six experts
// (2/3 each); R = 3. An expert moved onto the attention GPU takes the same
// 2/3 there. Forward only (backward times zero), no communication, so the
// numbers can be checked by hand.
ZebraStepSpec WorkedExample(int layers, const std::vector<int>& offloaded) {
  ZebraStepSpec spec;
  spec.layers = layers;
  spec.micro_batches = 3;
  spec.attention = {3.0, 0.0};
  for (int l = 0; l < layers; ++l) {
    const int moved = offloaded.empty() ? 0 : offloaded[l];
    spec.expert_rank.push_back({4.0 * (6 - moved) / 6.0, 0.0});
    spec.offloaded_experts.push_back({2.0 / 3.0 * moved, 0.0});
    spec.dispatch.push_back(0);
    spec.combine.push_back(0);
  }
  return spec;
}

const ResourceTimeline& Resource(const SimulationResult& sim, const std::string& name) {
  const ResourceTimeline* r = sim.Find(name);
  EXPECT_NE(r, nullptr) << name;
  return *r;
}

double StartOf(const ResourceTimeline& r, OpKind kind, int layer, int micro_batch) {
  for (const Interval& i : r.intervals) {
    if (i.label.kind == kind && i.label.layer == layer && i.label.micro_batch == micro_batch) return i.start;
  }
  ADD_FAILURE() << "no " << OpKindName(kind) << " at layer " << layer;
  return 0;
}

// Busy time of a resource inside [from, to).
double BusyBetween(const ResourceTimeline& r, double from, double to) {
  double busy = 0;
  for (const Interval& i : r.intervals) busy += std::max(0.0, std::min(i.end, to) - std::max(i.start, from));
  return busy;
}

TEST(WorkedExample, AttentionGpusBusy75PercentWithoutAsymEa) {
  // Many layers, so the steady state is visible: the expert GPU sets the
  // pace (12 units per layer) and the attention GPU works 9 of them.
  const SimulationResult sim = Simulate(BuildZebraStep(WorkedExample(12, {})), true);
  const ResourceTimeline& attention = Resource(sim, "attention");
  const double from = StartOf(attention, OpKind::kAttentionForward, 4, 0);
  const double to = StartOf(attention, OpKind::kAttentionForward, 8, 0);
  EXPECT_DOUBLE_EQ(to - from, 4 * 12.0);
  EXPECT_NEAR(BusyBetween(attention, from, to) / (to - from), 0.75, 1e-9);
  // The expert GPU never idles once it has started.
  const ResourceTimeline& expert = Resource(sim, "expert");
  EXPECT_NEAR(BusyBetween(expert, 3.0, sim.step_seconds), sim.step_seconds - 3.0, 1e-9);
}

TEST(WorkedExample, OffloadingOneExpertInLayers2And3RemovesMostBubbles) {
  const SimulationResult plain = Simulate(BuildZebraStep(WorkedExample(3, {0, 0, 0})), true);
  const SimulationResult asym = Simulate(BuildZebraStep(WorkedExample(3, {0, 1, 1})), true);
  EXPECT_DOUBLE_EQ(plain.step_seconds, 39.0);  // by hand: 3 + 3 layers x 12
  EXPECT_DOUBLE_EQ(asym.step_seconds, 35.0);
  const double faster = 1.0 - asym.step_seconds / plain.step_seconds;
  // Attention-GPU idle time after layer 1's attention (t = 9) to the end.
  auto idle = [](const SimulationResult& sim) {
    return sim.step_seconds - 9.0 - BusyBetween(*sim.Find("attention"), 9.0, sim.step_seconds);
  };
  const double removed = 1.0 - idle(asym) / idle(plain);
  std::printf("worked example: %.1f%% faster (paper: 10%%), %.0f%% of the attention GPU's bubbles in layers 2-3 "
              "removed (paper: 60%%)\n", 100 * faster, 100 * removed);
  EXPECT_NEAR(faster, 0.10, 0.01);
  EXPECT_GE(removed, 0.60);
}

TEST(WorkedExample, AlsoOffloadingInLayer1GainsNothing) {
  const SimulationResult two = Simulate(BuildZebraStep(WorkedExample(3, {0, 1, 1})));
  const SimulationResult three = Simulate(BuildZebraStep(WorkedExample(3, {1, 1, 1})));
  EXPECT_DOUBLE_EQ(three.step_seconds, two.step_seconds);
}

ZebraStepSpec Realistic(int layers, int micro_batches) {
  ZebraStepSpec spec = WorkedExample(layers, {});
  spec.micro_batches = micro_batches;
  spec.attention = {3.0, 6.0};
  spec.head = 2.0;
  for (int l = 0; l < layers; ++l) {
    spec.expert_rank[l] = {4.0, 8.0};
    spec.dispatch[l] = 0.5;
    spec.combine[l] = 0.5;
  }
  spec.attention_sync = {0.3, 0.2, 0.4};
  spec.expert_sync.assign(layers, 0.1);
  spec.attention_optimizer = 0.5;
  spec.expert_optimizer = 0.25;
  return spec;
}

TEST(Schedules, SequentialRunsEveryOpOneAfterAnother) {
  const ZebraStepSpec spec = Realistic(2, 3);
  const SimulationResult sim = Simulate(BuildSequentialStep(spec));
  // Per micro-batch: forward L x (A + D + E + C), head, backward L x (D + E + C + A).
  const double per_micro_batch = 2 * (3 + 0.5 + 4 + 0.5) + 2.0 + 2 * (0.5 + 8 + 0.5 + 6);
  // The head's and layer 2's all-reduces hide behind the backward of layer
  // 1; layer 1's and the embedding's, then the optimizer, follow it.
  const double tail = 0.2 + 0.4 + 0.5;
  EXPECT_NEAR(sim.step_seconds, 3 * per_micro_batch + tail, 1e-9);
}

TEST(Schedules, ZebraOverlapsWhatSequentialSerializes) {
  const ZebraStepSpec spec = Realistic(4, 4);
  const double zebra = Simulate(BuildZebraStep(spec)).step_seconds;
  const double sequential = Simulate(BuildSequentialStep(spec)).step_seconds;
  EXPECT_LT(zebra, 0.75 * sequential);
  // No schedule beats the busiest rank's total work.
  const double attention_work = 4 * 4 * 9.0 + 4 * 2.0 + 0.5;
  EXPECT_GE(zebra, attention_work);
}

TEST(Schedules, EveryResourceRunsOneTaskAtATimeInDependencyOrder) {
  const SimulationResult sim = Simulate(BuildZebraStep(Realistic(3, 4)), true);
  for (const ResourceTimeline& r : sim.resources) {
    for (size_t i = 1; i < r.intervals.size(); ++i) {
      EXPECT_LE(r.intervals[i - 1].end, r.intervals[i].start + 1e-12) << r.name;
    }
  }
  // Layer 2's attention for a micro-batch starts after layer 1's combine of it.
  const ResourceTimeline& attention = Resource(sim, "attention");
  const ResourceTimeline& combine = Resource(sim, "combine");
  for (int j = 0; j < 4; ++j) {
    double combined = 0;
    for (const Interval& i : combine.intervals) {
      if (!i.label.backward && i.label.layer == 0 && i.label.micro_batch == j) combined = i.end;
    }
    EXPECT_GE(StartOf(attention, OpKind::kAttentionForward, 1, j), combined);
  }
}

TEST(Schedules, EpWaitsForTheSlowestKindAtEveryAllToAll) {
  EpStepSpec spec;
  spec.layers = 2;
  spec.micro_batches = 1;
  spec.all_to_all = 1.0;
  spec.ranks.push_back({"fast", {1.0, 2.0}, {1.0, 2.0}, 0.5, {}, 0});
  spec.ranks.push_back({"slow", {4.0, 8.0}, {1.25, 2.5}, 2.0, {}, 0});
  const SimulationResult sim = Simulate(BuildEpStep(spec));
  // Forward per layer: slowest attention + a2a + slowest experts + a2a.
  const double forward = 2 * (4.0 + 1 + 1.25 + 1);
  const double backward = 2 * (1 + 2.5 + 1 + 8.0);
  EXPECT_NEAR(sim.step_seconds, forward + 2.0 + backward, 1e-9);
  EXPECT_LT(sim.BusyFraction("rank:fast"), sim.BusyFraction("rank:slow"));
}

TEST(Schedules, EpWaitsForEachLayersSlowestExpertsWhenRoutingIsUneven) {
  // Two ranks alike on average, but routing loads rank a in layer 1 and rank
  // b in layer 2: each layer's all-to-all waits for that layer's busier rank.
  EpStepSpec spec;
  spec.layers = 2;
  spec.micro_batches = 1;
  spec.ranks.push_back({"a", {1.0, 2.0}, {}, 0, {}, 0, {{3.0, 6.0}, {1.0, 2.0}}});
  spec.ranks.push_back({"b", {1.0, 2.0}, {}, 0, {}, 0, {{1.0, 2.0}, {3.0, 6.0}}});
  EXPECT_NEAR(Simulate(BuildEpStep(spec)).step_seconds, 2 * (1.0 + 3.0) + 2 * (6.0 + 2.0), 1e-9);
  for (EpRankSpec& r : spec.ranks) {
    r.experts = {2.0, 4.0};  // the per-rank means
    r.experts_by_layer.clear();
  }
  EXPECT_NEAR(Simulate(BuildEpStep(spec)).step_seconds, 2 * (1.0 + 2.0) + 2 * (4.0 + 2.0), 1e-9);
  spec.ranks[0].experts_by_layer = {{1.0, 2.0}};
  EXPECT_THROW(BuildEpStep(spec), Error);
}

TEST(Simulator, AResourceWaitsForItsNextTaskEvenIfALaterOneIsReady) {
  // The order on a resource is the schedule: b's second task is ready at 0
  // but runs after its first, which waits for a's task.
  StepGraph g;
  const int a = g.AddResource("a", ResourceKind::kCompute);
  const int b = g.AddResource("b", ResourceKind::kCompute);
  const int slow = g.AddTask(a, 5.0, {});
  g.AddTask(b, 1.0, {}, {slow});
  g.AddTask(b, 1.0, {});
  const SimulationResult sim = Simulate(g, true);
  EXPECT_DOUBLE_EQ(sim.step_seconds, 7.0);
  EXPECT_DOUBLE_EQ(sim.Find("b")->intervals[1].start, 6.0);
  EXPECT_DOUBLE_EQ(sim.BusyFraction("b"), 2.0 / 7.0);
}

TEST(Simulator, RejectsNegativeDurationsAndUnknownDependencies) {
  StepGraph g;
  const int r = g.AddResource("r", ResourceKind::kCompute);
  EXPECT_THROW(g.AddTask(r, -1.0, {}), Error);
  EXPECT_THROW(g.AddTask(r, 1.0, {}, {7}), Error);
  EXPECT_THROW(g.AddTask(3, 1.0, {}), Error);
}

}  // namespace
}  // namespace hetermoe::planner
