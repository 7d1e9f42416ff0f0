// Operator metrics (prometheus-cpp): controller-runtime's names, so existing
// dashboards and alerts work, plus HeterMoE job counters.
//
//   controller_runtime_reconcile_total{controller,result}
//   controller_runtime_reconcile_time_seconds{controller}   (histogram)
//   workqueue_depth{name}  workqueue_adds_total{name}  workqueue_retries_total{name}
//   rest_client_requests_total{code,method}
//   leader_election_master_status{name}
//   hetermoe_jobs_{created,succeeded,failed,restarted}_total{namespace}
//
// Families are registered once; series are looked up (and created) by label
// values, which stay low-cardinality. Thread-safe. The registry lives as
// long as this object; Serve() exposes it on /metrics.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "operator/machinery/work_queue.h"

namespace prometheus {
class Registry;
class Exposer;
template <typename T> class Family;
class Counter;
class Gauge;
class Histogram;
}  // namespace prometheus

namespace hetermoe::op {

class OperatorMetrics {
 public:
  OperatorMetrics();
  ~OperatorMetrics();

  // Binds "host:port" (port 0 = any); returns the port bound.
  int Serve(const std::string& bind_address);

  void Reconciled(const std::string& controller, const std::string& result, double seconds);
  WorkQueue::Hooks QueueHooks(const std::string& queue_name);
  void Request(const std::string& method, int code);
  void Leader(const std::string& name, bool leading);
  void JobEvent(const std::string& what, const std::string& namespace_);  // created|succeeded|failed|restarted

  // The exposition text, as /metrics serves it (for tests).
  std::string Text() const;
  // Also reports every reconcile's duration here (benchmarks); set before Start.
  void SetReconcileObserver(std::function<void(const std::string& controller, double seconds)> observer) {
    observer_ = std::move(observer);
  }

 private:
  std::function<void(const std::string&, double)> observer_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Family<prometheus::Counter>* reconcile_total_;
  prometheus::Family<prometheus::Histogram>* reconcile_time_;
  prometheus::Family<prometheus::Gauge>* queue_depth_;
  prometheus::Family<prometheus::Counter>* queue_adds_;
  prometheus::Family<prometheus::Counter>* queue_retries_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Gauge>* leader_;
  prometheus::Family<prometheus::Counter>* jobs_created_;
  prometheus::Family<prometheus::Counter>* jobs_succeeded_;
  prometheus::Family<prometheus::Counter>* jobs_failed_;
  prometheus::Family<prometheus::Counter>* jobs_restarted_;
};

}  // namespace hetermoe::op
