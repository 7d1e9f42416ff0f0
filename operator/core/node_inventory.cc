// Node inventory from Node objects: see node_inventory.h.
#include "operator/core/node_inventory.h"

namespace hetermoe::op {

using nlohmann::json;

namespace {

int64_t QuantityInt(const json& q) {
  if (q.is_number_integer()) return q.get<int64_t>();
  if (!q.is_string()) return 0;
  try {
    return std::stoll(q.get<std::string>());  // GPUs are whole numbers ("4")
  } catch (...) {
    return 0;
  }
}

}  // namespace

bool Tolerates(const json& tolerations, const json& taint) {
  const std::string key = taint.value("key", ""), value = taint.value("value", ""),
                    effect = taint.value("effect", "");
  for (const json& t : tolerations) {
    const std::string op = t.value("operator", "Equal");
    const std::string teffect = t.value("effect", "");
    if (!teffect.empty() && teffect != effect) continue;
    const std::string tkey = t.value("key", "");
    if (tkey.empty()) {
      if (op == "Exists") return true;  // empty key + Exists tolerates everything
      continue;
    }
    if (tkey != key) continue;
    if (op == "Exists" || t.value("value", "") == value) return true;
  }
  return false;
}

InventoryNode ReadInventoryNode(const json& node, const TierRule& rule, const json& tolerations) {
  InventoryNode out;
  const json& meta = node.at("metadata");
  out.name = meta.value("name", "");
  if (meta.contains("labels") && meta["labels"].is_object())
    for (auto it = meta["labels"].begin(); it != meta["labels"].end(); ++it)
      if (it->is_string()) out.labels[it.key()] = it->get<std::string>();
  out.gpu = ClassifyGpu(out.labels);
  if (out.gpu.present) out.tier = TierOf(out.gpu, rule);

  const json spec = node.value("spec", json::object());
  const json status = node.value("status", json::object());
  for (const json& c : status.value("conditions", json::array()))
    if (c.value("type", "") == "Ready") out.ready = c.value("status", "") == "True";

  out.cordoned = spec.value("unschedulable", false);
  out.taints = spec.value("taints", json::array());
  out.schedulable = SchedulableWith(out, tolerations);

  const json allocatable = status.value("allocatable", json::object());
  if (allocatable.contains(kGpuResource)) {
    out.gpus = QuantityInt(allocatable[kGpuResource]);
  } else {
    out.gpus = out.gpu.count;
  }
  return out;
}

bool SchedulableWith(const InventoryNode& node, const json& tolerations) {
  if (node.cordoned) return false;
  json all = tolerations.is_array() ? tolerations : json::array();
  all.push_back({{"key", kGpuResource}, {"operator", "Exists"}});
  for (const json& taint : node.taints) {
    const std::string effect = taint.value("effect", "");
    if ((effect == "NoSchedule" || effect == "NoExecute") && !Tolerates(all, taint)) return false;
  }
  return true;
}

std::vector<InventoryNode> UsableGpuNodes(const std::vector<InventoryNode>& nodes, const json& tolerations) {
  std::vector<InventoryNode> out;
  for (const InventoryNode& n : nodes)
    if (n.ready && n.gpu.present && n.gpus > 0 && SchedulableWith(n, tolerations)) out.push_back(n);
  return out;
}

}  // namespace hetermoe::op
