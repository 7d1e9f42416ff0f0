// Cluster inventory: which GPUs the plan may use, node by node.
//
// The operator builds one from node labels; people write it as YAML:
//
//   network: {nic_gbps: 100, latency_us: 10}   # optional; per-node NIC, per-message latency
//   nodes:
//     - {name: a40-0, gpu: A40, count: 4}
//     - {name: v100-0, gpu: V100, count: 8, nic_gbps: 200}   # nic_gbps overrides per node
//
// A node entry holds GPUs of one kind; a machine with two kinds is written as
// two entries with the same `host` (they then talk over the machine's
// NVLink/PCIe, not its NIC):
//
//     - {name: mix-0-a40, host: mix-0, gpu: A40, count: 4}
//     - {name: mix-0-v100, host: mix-0, gpu: V100, count: 4}
// GPU kinds are resolved against the profile table, so kinds added
// by a profiles YAML are accepted; names are canonicalized ("nvidia-a40" ->
// "A40"). Validation rejects unknown kinds, duplicate or empty node names,
// non-positive counts or bandwidths, and unknown keys.
#pragma once

#include <string>
#include <vector>

#include "planner/gpu_profiles.h"

namespace hetermoe::planner {

struct InventoryNode {
  std::string name;
  std::string gpu;        // canonical kind after validation
  int count = 0;          // GPUs on the node, indices 0..count-1
  double nic_gbps = 0;    // 0 = the cluster's default
  std::string host;       // the machine; empty = its own (the name)

  const std::string& Host() const { return host.empty() ? name : host; }
};

struct Inventory {
  std::vector<InventoryNode> nodes;
  double nic_gbps = 100;     // per node, Gbit/s (HeterMoE's testbed: 100 Gb/s RoCE)
  double latency_us = 10;    // per message between GPUs
  std::string source = "inventory";

  int TotalGpus() const;
  int Count(const std::string& kind) const;
  // Kinds in order of first appearance.
  std::vector<std::string> Kinds() const;
  // Most GPUs of `kind` on one node, and the slowest NIC among those nodes.
  int MaxGpusPerNode(const std::string& kind) const;
  double SlowestNicGbps(const std::string& kind) const;
};

// Checks and canonicalizes in place; throws hetermoe::Error "<source>: ...".
void ValidateInventory(Inventory& inventory, const GpuProfileTable& profiles);

Inventory ParseInventoryYaml(const std::string& text, const std::string& source, const GpuProfileTable& profiles);
Inventory LoadInventory(const std::string& path, const GpuProfileTable& profiles);

}  // namespace hetermoe::planner
