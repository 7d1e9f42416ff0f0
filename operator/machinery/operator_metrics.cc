// Operator metrics: see operator_metrics.h.
#include "operator/machinery/operator_metrics.h"

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

namespace hetermoe::op {

OperatorMetrics::OperatorMetrics() : registry_(std::make_shared<prometheus::Registry>()) {
  using namespace prometheus;
  reconcile_total_ = &BuildCounter().Name("controller_runtime_reconcile_total")
                          .Help("Total number of reconciliations per controller").Register(*registry_);
  reconcile_time_ = &BuildHistogram().Name("controller_runtime_reconcile_time_seconds")
                         .Help("Length of time per reconciliation per controller").Register(*registry_);
  queue_depth_ = &BuildGauge().Name("workqueue_depth").Help("Current depth of workqueue").Register(*registry_);
  queue_adds_ = &BuildCounter().Name("workqueue_adds_total").Help("Total number of adds handled by workqueue")
                     .Register(*registry_);
  queue_retries_ = &BuildCounter().Name("workqueue_retries_total").Help("Total number of retries handled by workqueue")
                        .Register(*registry_);
  requests_ = &BuildCounter().Name("rest_client_requests_total")
                   .Help("Number of HTTP requests, partitioned by status code and method").Register(*registry_);
  leader_ = &BuildGauge().Name("leader_election_master_status")
                 .Help("Whether this process is the leader (1) or not (0)").Register(*registry_);
  jobs_created_ = &BuildCounter().Name("hetermoe_jobs_created_total").Help("HeterMoEJobs whose pods were created")
                       .Register(*registry_);
  jobs_succeeded_ = &BuildCounter().Name("hetermoe_jobs_succeeded_total").Help("HeterMoEJobs that succeeded")
                         .Register(*registry_);
  jobs_failed_ = &BuildCounter().Name("hetermoe_jobs_failed_total").Help("HeterMoEJobs that failed")
                      .Register(*registry_);
  jobs_restarted_ = &BuildCounter().Name("hetermoe_jobs_restarted_total")
                         .Help("Whole-job restarts from the last checkpoint").Register(*registry_);
}

OperatorMetrics::~OperatorMetrics() = default;

int OperatorMetrics::Serve(const std::string& bind_address) {
  exposer_ = std::make_unique<prometheus::Exposer>(bind_address);
  exposer_->RegisterCollectable(registry_);
  auto ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

void OperatorMetrics::Reconciled(const std::string& controller, const std::string& result, double seconds) {
  reconcile_total_->Add({{"controller", controller}, {"result", result}}).Increment();
  static const prometheus::Histogram::BucketBoundaries kBuckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                                   1,     2.5,  5,     10,   30,  60};
  reconcile_time_->Add({{"controller", controller}}, kBuckets).Observe(seconds);
  if (observer_) observer_(controller, seconds);
}

WorkQueue::Hooks OperatorMetrics::QueueHooks(const std::string& name) {
  WorkQueue::Hooks hooks;
  auto* adds = &queue_adds_->Add({{"name", name}});
  auto* retries = &queue_retries_->Add({{"name", name}});
  auto* depth = &queue_depth_->Add({{"name", name}});
  hooks.on_add = [adds] { adds->Increment(); };
  hooks.on_retry = [retries] { retries->Increment(); };
  hooks.on_depth = [depth](size_t n) { depth->Set(static_cast<double>(n)); };
  return hooks;
}

void OperatorMetrics::Request(const std::string& method, int code) {
  requests_->Add({{"code", code == 0 ? std::string("<error>") : std::to_string(code)}, {"method", method}}).Increment();
}

void OperatorMetrics::Leader(const std::string& name, bool leading) {
  leader_->Add({{"name", name}}).Set(leading ? 1 : 0);
}

void OperatorMetrics::JobEvent(const std::string& what, const std::string& ns) {
  prometheus::Family<prometheus::Counter>* f = what == "created"     ? jobs_created_
                                               : what == "succeeded" ? jobs_succeeded_
                                               : what == "failed"    ? jobs_failed_
                                                                     : jobs_restarted_;
  f->Add({{"namespace", ns}}).Increment();
}

std::string OperatorMetrics::Text() const {
  prometheus::TextSerializer serializer;
  return serializer.Serialize(registry_->Collect());
}

}  // namespace hetermoe::op
