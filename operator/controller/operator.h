// Operator: everything one hetermoe-operator process runs, wired together:
// the REST client, informers (HeterMoEJobs, Pods, Services and ConfigMaps
// carrying hetermoe.io/job-name, Nodes), the node labeller, the job
// controller with N workers, optional leader election on a Lease, metrics
// and health probes. The binary and the integration tests both use it.
//
// Start() returns once the caches have synced (or throws on timeout); the
// controllers start working immediately, or when leadership is won. Stop()
// shuts down gracefully: workers finish their keys, the Lease is released.
// Kill() stops without releasing the Lease (a crash, for tests).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "operator/machinery/operator_metrics.h"
#include "operator/core/gpu_classification.h"
#include "operator/kube/kube_client.h"

namespace hetermoe::op {

class Informer;
class NodeLabeller;
class JobController;
class LeaderElector;
class HealthServer;
class ProgressPoller;
class PlacementPolicy;

struct OperatorOptions {
  std::string namespace_;              // "" = all namespaces
  int workers = 4;
  bool leader_elect = false;
  std::string lease_namespace = "default";
  std::string lease_name = "hetermoe-operator";
  std::string identity;                // default: hostname_pid
  double lease_seconds = 15, renew_deadline_seconds = 10, retry_period_seconds = 2;
  std::string metrics_bind_address;    // "" = no metrics endpoint
  std::string health_bind_address;     // "" = no probes
  TierRule tier_rule;
  int watch_timeout_seconds = 300;
  double client_qps = 50;
  int client_burst = 100;
  double sync_timeout_seconds = 60;
  double progress_tick_seconds = 0.5;  // how often due progress reads are looked for
  std::function<void()> on_lost_leadership;  // default: nothing (binary exits)
};

class Operator {
 public:
  Operator(KubeConfig config, OperatorOptions options);
  ~Operator();

  void Start();
  void Stop();
  void Kill();

  bool IsLeader() const;
  bool Ready() const;
  int metrics_port() const { return metrics_port_; }
  int health_port() const;
  OperatorMetrics& metrics() { return *metrics_; }
  KubeClient& client() { return *client_; }
  Informer& job_informer() { return *jobs_; }
  Informer& pod_informer() { return *pods_; }
  Informer& node_informer() { return *nodes_; }
  const std::string& identity() const { return options_.identity; }

 private:
  void StartControllers();
  void StopAll(bool release);

  OperatorOptions options_;
  std::unique_ptr<OperatorMetrics> metrics_;
  std::unique_ptr<KubeClient> client_;
  std::unique_ptr<PlacementPolicy> placement_;
  std::unique_ptr<Informer> jobs_, pods_, services_, config_maps_, nodes_;
  std::unique_ptr<NodeLabeller> labeller_;
  std::unique_ptr<JobController> jobs_controller_;
  std::unique_ptr<LeaderElector> elector_;
  std::unique_ptr<HealthServer> health_;
  std::unique_ptr<ProgressPoller> progress_;
  std::thread elector_thread_;
  std::atomic<bool> controllers_started_{false}, stopped_{false};
  int metrics_port_ = 0;
};

}  // namespace hetermoe::op
