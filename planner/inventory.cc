// Inventory queries, validation and the YAML reader.
#include "planner/inventory.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/yaml_fields.h"

namespace hetermoe::planner {

namespace yf = yaml_fields;

// A node with more GPUs than this is almost certainly a typo.
constexpr int kMaxGpusPerNode = 1024;

int Inventory::TotalGpus() const {
  int total = 0;
  for (const InventoryNode& node : nodes) total += node.count;
  return total;
}

int Inventory::Count(const std::string& kind) const {
  int total = 0;
  for (const InventoryNode& node : nodes) total += node.gpu == kind ? node.count : 0;
  return total;
}

std::vector<std::string> Inventory::Kinds() const {
  std::vector<std::string> kinds;
  for (const InventoryNode& node : nodes) {
    if (std::find(kinds.begin(), kinds.end(), node.gpu) == kinds.end()) kinds.push_back(node.gpu);
  }
  return kinds;
}

int Inventory::MaxGpusPerNode(const std::string& kind) const {
  int most = 0;
  for (const InventoryNode& node : nodes) most = node.gpu == kind ? std::max(most, node.count) : most;
  return most;
}

double Inventory::SlowestNicGbps(const std::string& kind) const {
  double slowest = 0;
  for (const InventoryNode& node : nodes) {
    if (node.gpu != kind) continue;
    const double nic = node.nic_gbps > 0 ? node.nic_gbps : nic_gbps;
    slowest = slowest == 0 ? nic : std::min(slowest, nic);
  }
  return slowest > 0 ? slowest : nic_gbps;
}

void ValidateInventory(Inventory& inventory, const GpuProfileTable& profiles) {
  const std::string& src = inventory.source;
  if (inventory.nodes.empty()) throw Error(src + ": no nodes");
  if (!(inventory.nic_gbps > 0)) throw Error(src + ": network.nic_gbps must be positive");
  if (!(inventory.latency_us >= 0)) throw Error(src + ": network.latency_us must not be negative");
  std::set<std::string> names;
  for (size_t i = 0; i < inventory.nodes.size(); ++i) {
    InventoryNode& node = inventory.nodes[i];
    const std::string where = src + ": nodes[" + std::to_string(i) + "]";
    if (node.name.empty()) throw Error(where + ": empty node name");
    if (!names.insert(node.name).second) {
      throw Error(where + ": node '" + node.name +
                  "' is listed twice (one entry per GPU kind; entries of one machine share a `host`)");
    }
    const auto kind = profiles.Canonical(node.gpu);
    if (!kind) {
      std::string known;
      for (const std::string& k : profiles.Kinds()) known += (known.empty() ? "" : ", ") + k;
      throw Error(where + " (" + node.name + "): unknown GPU kind '" + node.gpu + "' (known: " + known +
                  "; add it with --profiles)");
    }
    node.gpu = *kind;
    if (node.count < 1 || node.count > kMaxGpusPerNode) {
      throw Error(where + " (" + node.name + "): count must be between 1 and " + std::to_string(kMaxGpusPerNode) +
                  ", got " + std::to_string(node.count));
    }
    if (node.nic_gbps < 0) throw Error(where + " (" + node.name + "): nic_gbps must be positive");
  }
  // Entries of one host hold different kinds (one entry per kind).
  std::set<std::pair<std::string, std::string>> host_kinds;
  for (size_t i = 0; i < inventory.nodes.size(); ++i) {
    const InventoryNode& node = inventory.nodes[i];
    if (!host_kinds.insert({node.Host(), node.gpu}).second) {
      throw Error(src + ": nodes[" + std::to_string(i) + "] (" + node.name + "): host '" + node.Host() +
                  "' already has an entry for " + node.gpu + " (one entry per GPU kind and host)");
    }
  }
}

Inventory ParseInventoryYaml(const std::string& text, const std::string& source, const GpuProfileTable& profiles) {
  const yf::Where root{source, ""};
  const YAML::Node doc = yf::ParseDocument(text, source);
  if (!doc || doc.IsNull()) root.Fail("empty inventory (expected a map with 'nodes')");
  yf::RequireMap(doc, root);
  yf::CheckKeys(doc, {"nodes", "network"}, root);

  Inventory inventory;
  inventory.source = source;
  if (const YAML::Node network = doc["network"]) {
    const yf::Where where = root.Key("network");
    yf::RequireMap(network, where);
    yf::CheckKeys(network, {"nic_gbps", "latency_us"}, where);
    inventory.nic_gbps = yf::OptionalDouble(network, "nic_gbps", where).value_or(inventory.nic_gbps);
    inventory.latency_us = yf::OptionalDouble(network, "latency_us", where).value_or(inventory.latency_us);
  }

  const YAML::Node nodes = doc["nodes"];
  if (!nodes) root.Key("nodes").Fail("missing");
  yf::RequireSequence(nodes, root.Key("nodes"));
  for (size_t i = 0; i < nodes.size(); ++i) {
    const yf::Where where = root.Key("nodes").Index(i);
    const YAML::Node entry = nodes[i];
    yf::RequireMap(entry, where);
    yf::CheckKeys(entry, {"name", "host", "gpu", "count", "nic_gbps"}, where);
    InventoryNode node;
    node.name = yf::RequiredString(entry, "name", where);
    node.gpu = yf::RequiredString(entry, "gpu", where);
    const long long count = yf::RequiredInt(entry, "count", where);
    if (count < 1 || count > kMaxGpusPerNode) {
      where.Key("count").Fail("must be between 1 and " + std::to_string(kMaxGpusPerNode) + ", got " +
                              std::to_string(count));
    }
    node.count = static_cast<int>(count);
    const auto nic = yf::OptionalDouble(entry, "nic_gbps", where);
    if (nic && !(*nic > 0)) where.Key("nic_gbps").Fail("must be positive");
    node.nic_gbps = nic.value_or(0);
    node.host = yf::OptionalString(entry, "host", where).value_or("");
    inventory.nodes.push_back(std::move(node));
  }
  ValidateInventory(inventory, profiles);
  return inventory;
}

Inventory LoadInventory(const std::string& path, const GpuProfileTable& profiles) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot open inventory");
  std::stringstream text;
  text << in.rdbuf();
  return ParseInventoryYaml(text.str(), path, profiles);
}

}  // namespace hetermoe::planner
