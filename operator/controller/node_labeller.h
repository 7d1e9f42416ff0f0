// NodeLabeller: keeps hetermoe.io/gpu-generation and hetermoe.io/gpu-tier
// on every GPU node in step with its GFD labels (and removes them from nodes
// that lost their GPUs). It merge-patches metadata.labels only, and only
// when something differs; no other node field is touched.
#pragma once

#include <memory>
#include <string>

#include "operator/machinery/controller_loop.h"
#include "operator/machinery/informer.h"
#include "operator/core/gpu_classification.h"

namespace hetermoe::op {

class NodeLabeller {
 public:
  // Registers its handler on `nodes` (call before nodes.Start()).
  NodeLabeller(KubeClient& client, Informer& nodes, TierRule rule, OperatorMetrics* metrics);
  void Start(int workers) { loop_.Start(workers); }
  void Stop() { loop_.Stop(); }
  ReconcileResult Reconcile(const std::string& name);
  WorkQueue& queue() { return queue_; }

 private:
  KubeClient& client_;
  Informer& nodes_;
  TierRule rule_;
  WorkQueue queue_;
  ControllerLoop loop_;
};

}  // namespace hetermoe::op
