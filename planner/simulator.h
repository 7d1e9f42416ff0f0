// Discrete-event simulation of one training step.
//
// A step is a graph of tasks. Each task runs on one resource (a GPU's
// compute stream, or a communication channel such as the dispatch or combine
// stream of a ZP group), takes a fixed time, and may start only when the
// tasks it depends on have finished. Every resource runs its tasks one at a
// time, in the order they were added to it: that order *is* the schedule
// (step_graph.h builds the zebra, sequential and EP orders). The simulation
// advances from completion event to completion event and records, per
// resource, when it was busy.
//
// Ranks that do identical work (the M attention ranks of a ZP group, say) are
// represented by one resource; the schedules use this symmetry so the cost
// of a simulation does not grow with the cluster.
//
// Pure and deterministic. A task may only depend on tasks added before it,
// and a resource runs its tasks in the order they were added, so every
// ordering constraint points from an earlier task to a later one: a graph
// built this way cannot deadlock. (Simulate() still checks, and throws
// hetermoe::Error if a task never ran.)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace hetermoe::planner {

// What a task is, in the domain's words (for timelines and tests).
enum class OpKind {
  kAttentionForward,            // A^F(l, j): attention + gate on an attention rank
  kAttentionBackward,           // A^B(l, j)
  kExpertForward,               // E^F(l, j): an expert rank's experts of layer l
  kExpertBackward,              // E^B(l, j)
  kOffloadedExpertForward,      // Asym-EA: experts of layer l held by an attention rank
  kOffloadedExpertBackward,
  kDispatch,                    // attention -> experts (tokens forward, output grads backward)
  kCombine,                     // experts -> attention (outputs forward, input grads backward)
  kHead,                        // final norm + LM head + loss, forward and backward
  kGradientSync,                // data-parallel all-reduce after the last backward op
  kOptimizer,                   // AdamW update
};
const char* OpKindName(OpKind kind);

struct OpLabel {
  OpKind kind = OpKind::kAttentionForward;
  int layer = -1;        // 0-based; -1 when not per layer
  int micro_batch = -1;  // 0-based; -1 when not per micro-batch
  bool backward = false; // for dispatch/combine: which pass
};

enum class ResourceKind { kCompute, kLink };

class StepGraph {
 public:
  int AddResource(std::string name, ResourceKind kind);
  // Appends a task to `resource`'s order. Dependencies must be existing tasks.
  int AddTask(int resource, double seconds, OpLabel label, std::vector<int> deps = {});

  struct Task {
    int resource;
    double seconds;
    OpLabel label;
    std::vector<int> deps;
  };
  struct Resource {
    std::string name;
    ResourceKind kind;
    std::vector<int> order;  // task ids, in execution order
  };

  const std::vector<Task>& tasks() const { return tasks_; }
  const std::vector<Resource>& resources() const { return resources_; }

 private:
  std::vector<Task> tasks_;
  std::vector<Resource> resources_;
};

struct Interval {
  double start = 0;
  double end = 0;
  OpLabel label;
};

struct ResourceTimeline {
  std::string name;
  ResourceKind kind = ResourceKind::kCompute;
  double busy_seconds = 0;
  std::vector<Interval> intervals;  // empty unless recorded
};

struct SimulationResult {
  double step_seconds = 0;
  std::vector<ResourceTimeline> resources;  // same order as the graph's

  // busy / step time of the named resource (0 if absent or the step is empty).
  double BusyFraction(const std::string& resource) const;
  const ResourceTimeline* Find(const std::string& resource) const;
};

SimulationResult Simulate(const StepGraph& graph, bool record_intervals = false);

}  // namespace hetermoe::planner
