// Node inventory: the ready, schedulable GPU nodes the planner may use, per
// tier, read from Node objects as the informer caches them.
//
// A node counts when its Ready condition is True, it is not cordoned, and
// every NoSchedule/NoExecute taint is tolerated by the pods we create (the
// nvidia.com/gpu taint always is: GPU pods carry that toleration). GPUs
// counted are the allocatable nvidia.com/gpu, falling back to GFD's count.
// Pure functions over JSON.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "operator/core/gpu_classification.h"

namespace hetermoe::op {

struct InventoryNode {
  std::string name;
  GpuInfo gpu;
  std::string tier;            // attention | expert ("" when no GPU)
  int64_t gpus = 0;            // allocatable nvidia.com/gpu
  bool ready = false;
  bool schedulable = false;    // not cordoned, taints tolerated
  bool cordoned = false;       // spec.unschedulable
  nlohmann::json taints = nlohmann::json::array();
  Labels labels;
};

// `tolerations` are core/v1 Toleration objects of the pods to place.
InventoryNode ReadInventoryNode(const nlohmann::json& node, const TierRule& rule,
                                const nlohmann::json& tolerations = nlohmann::json::array());

// True when some toleration in `tolerations` tolerates `taint`.
bool Tolerates(const nlohmann::json& tolerations, const nlohmann::json& taint);

// Whether pods with `tolerations` (plus the GPU toleration) may land on the node.
bool SchedulableWith(const InventoryNode& node, const nlohmann::json& tolerations);

// Nodes that can take GPU pods with `tolerations` now (ready, schedulable, with GPUs).
std::vector<InventoryNode> UsableGpuNodes(const std::vector<InventoryNode>& nodes,
                                          const nlohmann::json& tolerations = nlohmann::json::array());

}  // namespace hetermoe::op
