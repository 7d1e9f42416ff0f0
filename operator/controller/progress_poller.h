// ProgressPoller: feeds status.progress of running jobs from the trainer.
// Every job's spec.monitoring.progressIntervalSeconds it reads rank 0's
// Prometheus endpoint (pod <job>-attention-0, its podIP and
// spec.monitoring.metricsPort) and merge-patches status.progress alone, so
// it never overwrites the reconciler's fields (whose own writes carry the
// resourceVersion and are redone on conflict). Unreachable endpoints are
// normal while pods start: they are skipped until the next interval.
// Runs on its own thread while this process leads.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "operator/machinery/informer.h"

namespace hetermoe::op {

// GET http://host:port/path with a timeout; nullopt on any failure or non-200.
std::optional<std::string> HttpGet(const std::string& host, int port, const std::string& path, double timeout_seconds);

class ProgressPoller {
 public:
  ProgressPoller(KubeClient& client, Informer& jobs, Informer& pods, double tick_seconds = 0.5);
  ~ProgressPoller();
  void Start();
  void Stop();
  void PollOnce();  // one pass over the running jobs (also for tests)

 private:
  KubeClient& client_;
  Informer& jobs_;
  Informer& pods_;
  double tick_seconds_;
  std::map<std::string, std::chrono::steady_clock::time_point> next_poll_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
};

}  // namespace hetermoe::op
