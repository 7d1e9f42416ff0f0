// Inventories the planner tests build in memory: `count` GPUs of a kind on
// nodes of `per_node`, named <kind>-<i>, on the cluster's default network
// (100 Gb/s per node, HeterMoE's testbed); and plan requests over them.
#pragma once

#include <algorithm>
#include <cctype>
#include <string>
#include <vector>

#include "planner/inventory.h"
#include "planner/planner.h"

namespace hetermoe::planner::testing {

struct KindCount {
  std::string gpu;
  int count;
  int per_node;
};

inline Inventory Cluster(const std::vector<KindCount>& kinds, const std::string& name = "cluster") {
  Inventory inventory;
  inventory.source = name;
  for (const KindCount& k : kinds) {
    std::string prefix = k.gpu;
    std::transform(prefix.begin(), prefix.end(), prefix.begin(), [](unsigned char c) { return std::tolower(c); });
    for (int left = k.count, i = 0; left > 0; left -= k.per_node, ++i) {
      inventory.nodes.push_back({prefix + "-" + std::to_string(i), k.gpu, std::min(left, k.per_node), 0, ""});
    }
  }
  return inventory;
}

inline PlanRequest Request(Inventory inventory, ModelShape model, int64_t seq_len, int64_t global_batch) {
  PlanRequest r;
  r.inventory = std::move(inventory);
  r.model = std::move(model);
  r.seq_len = seq_len;
  r.global_batch = global_batch;
  return r;
}

}  // namespace hetermoe::planner::testing
