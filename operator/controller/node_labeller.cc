// NodeLabeller: see node_labeller.h.
#include "operator/controller/node_labeller.h"

#include "operator/machinery/log.h"
#include "operator/machinery/operator_metrics.h"
#include "operator/kube/resource.h"

namespace hetermoe::op {

using nlohmann::json;

namespace {

Labels LabelsOf(const json& object) {
  Labels labels;
  const json& meta = object.at("metadata");
  if (meta.contains("labels") && meta["labels"].is_object())
    for (auto it = meta["labels"].begin(); it != meta["labels"].end(); ++it)
      if (it->is_string()) labels[it.key()] = it->get<std::string>();
  return labels;
}

}  // namespace

NodeLabeller::NodeLabeller(KubeClient& client, Informer& nodes, TierRule rule, OperatorMetrics* metrics)
    : client_(client),
      nodes_(nodes),
      rule_(rule),
      queue_(RateLimits{}, metrics ? metrics->QueueHooks("node-labeller") : WorkQueue::Hooks{}),
      loop_("node-labeller", queue_, [this](const std::string& key) { return Reconcile(key); }, metrics) {
  nodes_.AddHandler([this](const ObjectPtr& old, const ObjectPtr& now) {
    if (!now) return;
    // Only label changes matter (status heartbeats are frequent).
    if (old && (*old)["metadata"].value("labels", json::object()) == (*now)["metadata"].value("labels", json::object()))
      return;
    if (NodeLabelChanges(LabelsOf(*now), rule_).empty()) return;
    queue_.Add(ObjectKey(*now));
  });
}

ReconcileResult NodeLabeller::Reconcile(const std::string& name) {
  ObjectPtr node = nodes_.Get(name);
  if (!node) return {};
  auto changes = NodeLabelChanges(LabelsOf(*node), rule_);
  if (changes.empty()) return {};
  json labels = json::object();
  for (const auto& [key, value] : changes) labels[key] = value ? json(*value) : json(nullptr);
  try {
    client_.MergePatch(kNodes.Path("", name), {{"metadata", {{"labels", labels}}}});
  } catch (const ApiError& e) {
    if (e.NotFound()) return {};
    throw;
  }
  LogInfo("labelled node", {{"node", name}, {"labels", labels.dump()}});
  return {};
}

}  // namespace hetermoe::op
