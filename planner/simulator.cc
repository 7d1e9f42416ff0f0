// The event loop: a min-heap of completion times; when a task completes, its
// resource and the resources of its dependents try to start their next task.
#include "planner/simulator.h"

#include <functional>
#include <queue>
#include <utility>

#include "common/error.h"

namespace hetermoe::planner {

const char* OpKindName(OpKind kind) {
  switch (kind) {
    case OpKind::kAttentionForward: return "attention_forward";
    case OpKind::kAttentionBackward: return "attention_backward";
    case OpKind::kExpertForward: return "expert_forward";
    case OpKind::kExpertBackward: return "expert_backward";
    case OpKind::kOffloadedExpertForward: return "offloaded_expert_forward";
    case OpKind::kOffloadedExpertBackward: return "offloaded_expert_backward";
    case OpKind::kDispatch: return "dispatch";
    case OpKind::kCombine: return "combine";
    case OpKind::kHead: return "head";
    case OpKind::kGradientSync: return "gradient_sync";
    case OpKind::kOptimizer: return "optimizer";
  }
  return "unknown";
}

int StepGraph::AddResource(std::string name, ResourceKind kind) {
  resources_.push_back({std::move(name), kind, {}});
  return static_cast<int>(resources_.size()) - 1;
}

int StepGraph::AddTask(int resource, double seconds, OpLabel label, std::vector<int> deps) {
  if (resource < 0 || resource >= static_cast<int>(resources_.size())) {
    throw Error("simulator: task on unknown resource " + std::to_string(resource));
  }
  if (!(seconds >= 0)) throw Error("simulator: negative or NaN duration on " + resources_[resource].name);
  const int id = static_cast<int>(tasks_.size());
  for (int dep : deps) {
    if (dep < 0 || dep >= id) throw Error("simulator: task depends on unknown task " + std::to_string(dep));
  }
  tasks_.push_back({resource, seconds, label, std::move(deps)});
  resources_[resource].order.push_back(id);
  return id;
}

double SimulationResult::BusyFraction(const std::string& resource) const {
  const ResourceTimeline* timeline = Find(resource);
  if (timeline == nullptr || step_seconds <= 0) return 0;
  return timeline->busy_seconds / step_seconds;
}

const ResourceTimeline* SimulationResult::Find(const std::string& resource) const {
  for (const ResourceTimeline& timeline : resources) {
    if (timeline.name == resource) return &timeline;
  }
  return nullptr;
}

SimulationResult Simulate(const StepGraph& graph, bool record_intervals) {
  const auto& tasks = graph.tasks();
  const auto& resources = graph.resources();
  const size_t n = tasks.size();

  std::vector<int> unfinished_deps(n);
  std::vector<std::vector<int>> dependents(n);
  for (size_t t = 0; t < n; ++t) {
    unfinished_deps[t] = static_cast<int>(tasks[t].deps.size());
    for (int dep : tasks[t].deps) dependents[dep].push_back(static_cast<int>(t));
  }

  SimulationResult result;
  result.resources.resize(resources.size());
  for (size_t r = 0; r < resources.size(); ++r) {
    result.resources[r].name = resources[r].name;
    result.resources[r].kind = resources[r].kind;
  }

  std::vector<size_t> next(resources.size(), 0);  // position in each resource's order
  std::vector<bool> idle(resources.size(), true);
  std::vector<double> start_time(n, 0);
  using Event = std::pair<double, int>;  // (completion time, task)
  std::priority_queue<Event, std::vector<Event>, std::greater<>> events;

  auto try_start = [&](int r, double now) {
    if (!idle[r] || next[r] >= resources[r].order.size()) return;
    const int t = resources[r].order[next[r]];
    if (unfinished_deps[t] > 0) return;
    idle[r] = false;
    start_time[t] = now;
    events.push({now + tasks[t].seconds, t});
  };

  for (size_t r = 0; r < resources.size(); ++r) try_start(static_cast<int>(r), 0.0);

  size_t completed = 0;
  double now = 0;
  while (!events.empty()) {
    const auto [time, t] = events.top();
    events.pop();
    now = time;
    ++completed;
    const int r = tasks[t].resource;
    ResourceTimeline& timeline = result.resources[r];
    timeline.busy_seconds += tasks[t].seconds;
    if (record_intervals) timeline.intervals.push_back({start_time[t], time, tasks[t].label});
    idle[r] = true;
    ++next[r];
    for (int d : dependents[t]) --unfinished_deps[d];
    try_start(r, now);
    for (int d : dependents[t]) try_start(tasks[d].resource, now);
  }

  if (completed != n) {
    for (size_t r = 0; r < resources.size(); ++r) {
      if (next[r] < resources[r].order.size()) {
        const int t = resources[r].order[next[r]];
        throw Error(std::string("simulator: schedule deadlocks: ") + resources[r].name + " waits forever at " +
                    OpKindName(tasks[t].label.kind) + " (its order contradicts the dependencies)");
      }
    }
  }
  result.step_seconds = now;
  return result;
}

}  // namespace hetermoe::planner
