// ControllerLoop: see controller_loop.h.
#include "operator/machinery/controller_loop.h"

#include <chrono>

#include "operator/machinery/log.h"
#include "operator/machinery/operator_metrics.h"

namespace hetermoe::op {

ControllerLoop::ControllerLoop(std::string name, WorkQueue& queue, Reconcile reconcile, OperatorMetrics* metrics)
    : name_(std::move(name)), queue_(queue), reconcile_(std::move(reconcile)), metrics_(metrics) {}

ControllerLoop::~ControllerLoop() { Stop(); }

void ControllerLoop::Start(int workers) {
  for (int i = 0; i < workers; ++i) workers_.emplace_back([this] { Work(); });
}

void ControllerLoop::Stop() {
  queue_.ShutDown();
  for (std::thread& t : workers_)
    if (t.joinable()) t.join();
  workers_.clear();
}

void ControllerLoop::Work() {
  while (auto key = queue_.Get()) {
    auto start = std::chrono::steady_clock::now();
    std::string result = "success";
    try {
      ReconcileResult r = reconcile_(*key);
      queue_.Forget(*key);
      if (r.requeue_after_seconds) {
        result = "requeue_after";
        queue_.AddAfter(*key, *r.requeue_after_seconds);
      }
    } catch (const std::exception& e) {
      result = "error";
      LogError("reconcile failed", {{"controller", name_}, {"key", *key}, {"error", e.what()},
                                    {"retries", std::to_string(queue_.Retries(*key))}});
      queue_.AddRateLimited(*key);
    }
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (metrics_) metrics_->Reconciled(name_, result, seconds);
    queue_.Done(*key);
  }
}

}  // namespace hetermoe::op
