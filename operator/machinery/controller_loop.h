// ControllerLoop: N workers taking keys from a WorkQueue and reconciling
// them, one key at a time (the queue guarantees no key is held by two
// workers). A reconcile that throws is retried with the queue's backoff and
// logged; one that succeeds resets the key's backoff and may ask to be
// called again after a delay. Metrics: controller_runtime_reconcile_*.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "operator/machinery/work_queue.h"

namespace hetermoe::op {

class OperatorMetrics;

struct ReconcileResult {
  std::optional<double> requeue_after_seconds;
};

class ControllerLoop {
 public:
  using Reconcile = std::function<ReconcileResult(const std::string& key)>;
  ControllerLoop(std::string name, WorkQueue& queue, Reconcile reconcile, OperatorMetrics* metrics);
  ~ControllerLoop();

  void Start(int workers);
  // Shuts the queue down and waits for the workers to finish their keys.
  void Stop();

 private:
  void Work();

  std::string name_;
  WorkQueue& queue_;
  Reconcile reconcile_;
  OperatorMetrics* metrics_;
  std::vector<std::thread> workers_;
};

}  // namespace hetermoe::op
