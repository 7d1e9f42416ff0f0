// JobController: reconciles HeterMoEJobs. The I/O edges around the pure
// decision in core/job_reconcile.h:
//   read   the job and its children from the informer caches (children are
//          found by the hetermoe.io/job-name label and must be controlled by
//          the job's uid), the model config, the usable GPU nodes;
//   decide DecideJob();
//   act    server-side apply for the ConfigMap, Service and PodGroup, create
//          for pods (AlreadyExists is success: names are deterministic),
//          delete for pods and, after the TTL, the job;
//   write  one status merge-patch on the /status subresource, carrying the
//          resourceVersion; on 409 the job is re-read and the decision made
//          again (at most 5 times). When acting failed, the status is still
//          written (Created=False, reason CreateFailed) and the error is
//          returned so the key is retried with backoff.
// Jobs whose runPolicy.managedBy names another controller are left alone.
#pragma once

#include <map>
#include <mutex>
#include <string>

#include "operator/machinery/controller_loop.h"
#include "operator/machinery/informer.h"
#include "operator/core/events.h"
#include "operator/core/gpu_classification.h"
#include "operator/core/node_inventory.h"
#include "operator/core/placement.h"

namespace hetermoe::op {

class JobController {
 public:
  struct Informers {
    Informer* jobs;
    Informer* pods;
    Informer* services;
    Informer* config_maps;
    Informer* nodes;
  };
  struct Options {
    std::string field_manager = "hetermoe-operator";
    TierRule tier_rule;
    std::string identity = "hetermoe-operator";  // Events' reportingInstance
    bool record_events = true;                    // post core/v1 Events on jobs
  };

  // Registers handlers on the informers (call before starting them).
  JobController(KubeClient& client, Informers informers, const PlacementPolicy& placement, Options options,
                OperatorMetrics* metrics);
  void Start(int workers) { loop_.Start(workers); }
  void Stop() { loop_.Stop(); }
  ReconcileResult Reconcile(const std::string& key);
  WorkQueue& queue() { return queue_; }

 private:
  void RecordEvents(const JobMeta& job, const std::vector<JobEvent>& events);
  ReconcileResult ReconcileObject(const nlohmann::json& object);
  void EnqueueOwner(const ObjectPtr& object);
  // The job as we last wrote it, when the cache has not caught up with it.
  nlohmann::json Freshest(const std::string& key, const ObjectPtr& cached);
  void RememberWrite(const std::string& key, nlohmann::json written);
  void OnNode(const ObjectPtr& old, const ObjectPtr& now);
  std::vector<InventoryNode> Nodes(const nlohmann::json& tolerations);

  KubeClient& client_;
  Informers informers_;
  const PlacementPolicy& placement_;
  Options options_;
  OperatorMetrics* metrics_;
  WorkQueue queue_;
  ControllerLoop loop_;
  // Our own status writes, until the job cache shows them (as client-go's
  // MutationCache): deciding from a cache that lags our last write would
  // recreate pods the job already finished with.
  std::mutex written_mu_;
  std::map<std::string, nlohmann::json> written_;
  std::mutex nodes_mu_;
  std::map<std::string, InventoryNode> inventory_;  // by node name, GPU nodes only
};

// metadata.resourceVersion as a number (etcd revisions); -1 if it is not one.
int64_t ResourceVersionOf(const nlohmann::json& object);

// Label index used for children: "namespace/job-name".
std::vector<std::string> JobIndexOf(const nlohmann::json& object);

}  // namespace hetermoe::op
