// Node classification from real GPU Feature Discovery label sets, the tier
// rule, the labels the labeller keeps, and the node inventory.
#include "operator/core/gpu_classification.h"

#include <gtest/gtest.h>

#include "operator/core/node_inventory.h"

namespace hetermoe::op {
namespace {

// Label sets as GFD writes them (trimmed to the nvidia.com/gpu.* keys plus a
// few neighbours that must not confuse the classifier).
Labels Gfd(const std::string& product, const std::string& family, const std::string& major, const std::string& minor,
           const std::string& memory, const std::string& count) {
  Labels l = {{"kubernetes.io/os", "linux"},
              {"nvidia.com/cuda.driver.major", "535"},
              {"nvidia.com/gpu.present", "true"},
              {"nvidia.com/gpu.product", product},
              {"nvidia.com/gpu.family", family},
              {"nvidia.com/gpu.compute.major", major},
              {"nvidia.com/gpu.compute.minor", minor},
              {"nvidia.com/gpu.memory", memory},
              {"nvidia.com/gpu.count", count},
              {"nvidia.com/mig.capable", "false"}};
  return l;
}

struct Case {
  std::string name;
  Labels labels;
  bool present;
  std::string generation;
  std::string tier;
  bool mig;
};

class Classify : public ::testing::TestWithParam<Case> {};

TEST_P(Classify, GenerationAndTier) {
  const Case& c = GetParam();
  GpuInfo gpu = ClassifyGpu(c.labels);
  EXPECT_EQ(gpu.present, c.present);
  if (!c.present) return;
  EXPECT_EQ(gpu.generation, c.generation);
  EXPECT_EQ(gpu.mig, c.mig);
  EXPECT_EQ(TierOf(gpu, TierRule{}), c.tier);
}

Labels MigSingle() {
  Labels l = Gfd("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", "ampere", "8", "0", "4864", "7");
  l["nvidia.com/mig.strategy"] = "single";
  l["nvidia.com/mig.capable"] = "true";
  return l;
}
Labels MigMixed() {
  Labels l = Gfd("NVIDIA-A100-SXM4-80GB", "ampere", "8", "0", "81920", "1");
  l["nvidia.com/mig.strategy"] = "mixed";
  l["nvidia.com/mig-1g.10gb.count"] = "7";
  return l;
}

INSTANTIATE_TEST_SUITE_P(
    GfdLabelSets, Classify,
    ::testing::Values(
        Case{"V100", Gfd("Tesla-V100-SXM2-32GB", "volta", "7", "0", "32768", "8"), true, "volta", "expert", false},
        Case{"T4", Gfd("Tesla-T4", "turing", "7", "5", "15360", "4"), true, "turing", "expert", false},
        Case{"A40", Gfd("NVIDIA-A40", "ampere", "8", "6", "46068", "4"), true, "ampere", "attention", false},
        Case{"A100", Gfd("NVIDIA-A100-SXM4-80GB", "ampere", "8", "0", "81920", "8"), true, "ampere", "attention", false},
        Case{"L40S", Gfd("NVIDIA-L40S", "ada-lovelace", "8", "9", "46068", "8"), true, "ada", "attention", false},
        Case{"H100", Gfd("NVIDIA-H100-80GB-HBM3", "hopper", "9", "0", "81559", "8"), true, "hopper", "attention", false},
        Case{"B200", Gfd("NVIDIA-B200", "blackwell", "10", "0", "183359", "8"), true, "blackwell", "attention", false},
        // MIG slices are too small for attention whatever the GPU.
        Case{"MigSingle", MigSingle(), true, "ampere", "expert", true},
        Case{"MigMixed", MigMixed(), true, "ampere", "expert", true},
        // Missing labels.
        Case{"NoGpu", Labels{{"kubernetes.io/os", "linux"}}, false, "", "", false},
        Case{"PresentFalse", Labels{{"nvidia.com/gpu.present", "false"}}, false, "", "", false},
        Case{"OnlyPresent", Labels{{"nvidia.com/gpu.present", "true"}}, true, "unknown", "expert", false},
        Case{"ProductOnlyH100", Labels{{"nvidia.com/gpu.product", "NVIDIA-H100-PCIe"}}, true, "hopper", "attention",
             false},
        Case{"ProductOnlyV100", Labels{{"nvidia.com/gpu.product", "Tesla-V100-PCIE-16GB"}}, true, "volta", "expert",
             false},
        Case{"ProductA400NotA40", Labels{{"nvidia.com/gpu.product", "NVIDIA-RTX-A400"}}, true, "ampere", "attention",
             false},
        Case{"FamilyOnly", Labels{{"nvidia.com/gpu.present", "true"}, {"nvidia.com/gpu.family", "ada-lovelace"}}, true,
             "ada", "attention", false},
        Case{"GarbledCompute",
             Labels{{"nvidia.com/gpu.present", "true"}, {"nvidia.com/gpu.compute.major", "x"},
                    {"nvidia.com/gpu.compute.minor", "0"}, {"nvidia.com/gpu.family", "volta"}},
             true, "volta", "expert", false},
        // Compute capability wins over a product string the driver renamed.
        Case{"ComputeBeatsProduct", Gfd("Graphics-Device", "", "9", "0", "81559", "8"), true, "hopper", "attention",
             false}),
    [](const auto& info) { return info.param.name; });

TEST(TierRule, ThresholdIsConfigurable) {
  TierRule hopper_only{90};
  EXPECT_EQ(TierOf(ClassifyGpu(Gfd("NVIDIA-A100-SXM4-80GB", "ampere", "8", "0", "81920", "8")), hopper_only), "expert");
  EXPECT_EQ(TierOf(ClassifyGpu(Gfd("NVIDIA-H100-80GB-HBM3", "hopper", "9", "0", "81559", "8")), hopper_only),
            "attention");
  TierRule turing_up{75};
  EXPECT_EQ(TierOf(ClassifyGpu(Gfd("Tesla-T4", "turing", "7", "5", "15360", "4")), turing_up), "attention");
}

TEST(ComputeCapability, Parses) {
  EXPECT_EQ(ParseComputeCapability("8.6"), (ComputeCapability{8, 6}));
  EXPECT_EQ(ParseComputeCapability("10.0"), (ComputeCapability{10, 0}));
  EXPECT_FALSE(ParseComputeCapability("8"));
  EXPECT_FALSE(ParseComputeCapability("8.x"));
  EXPECT_FALSE(ParseComputeCapability("8.10"));
}

TEST(NodeLabels, AddedChangedKeptAndRemoved) {
  Labels a40 = Gfd("NVIDIA-A40", "ampere", "8", "6", "46068", "4");
  auto changes = NodeLabelChanges(a40, TierRule{});
  ASSERT_EQ(changes.size(), 2u);
  EXPECT_EQ(changes[kLabelGeneration], "ampere");
  EXPECT_EQ(changes[kLabelTier], "attention");

  a40[kLabelGeneration] = "ampere";
  a40[kLabelTier] = "attention";
  EXPECT_TRUE(NodeLabelChanges(a40, TierRule{}).empty()) << "an up-to-date node is left alone";

  a40[kLabelTier] = "expert";  // edited by hand, or the rule changed
  changes = NodeLabelChanges(a40, TierRule{});
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[kLabelTier], "attention");

  Labels gone = {{kLabelGeneration, "ampere"}, {kLabelTier, "attention"}};  // GPU removed
  changes = NodeLabelChanges(gone, TierRule{});
  ASSERT_EQ(changes.size(), 2u);
  EXPECT_FALSE(changes[kLabelGeneration].has_value());
  EXPECT_FALSE(changes[kLabelTier].has_value());

  EXPECT_TRUE(NodeLabelChanges(Labels{{"kubernetes.io/os", "linux"}}, TierRule{}).empty());
}

nlohmann::json Node(const std::string& name, const Labels& labels, bool ready, nlohmann::json spec = nlohmann::json::object(),
                    nlohmann::json allocatable = {{"nvidia.com/gpu", "4"}}) {
  nlohmann::json l = nlohmann::json::object();
  for (const auto& [k, v] : labels) l[k] = v;
  return {{"metadata", {{"name", name}, {"labels", l}}},
          {"spec", spec},
          {"status", {{"allocatable", allocatable},
                      {"conditions", {{{"type", "Ready"}, {"status", ready ? "True" : "False"}}}}}}};
}

TEST(NodeInventory, ReadyUntaintedGpuNodesOnly) {
  Labels a40 = Gfd("NVIDIA-A40", "ampere", "8", "6", "46068", "4");
  std::vector<InventoryNode> nodes = {
      ReadInventoryNode(Node("ok", a40, true), TierRule{}),
      ReadInventoryNode(Node("not-ready", a40, false), TierRule{}),
      ReadInventoryNode(Node("cordoned", a40, true, {{"unschedulable", true}}), TierRule{}),
      ReadInventoryNode(Node("gpu-taint", a40, true,
                             {{"taints", {{{"key", "nvidia.com/gpu"}, {"effect", "NoSchedule"}}}}}),
                        TierRule{}),
      ReadInventoryNode(Node("other-taint", a40, true,
                             {{"taints", {{{"key", "dedicated"}, {"value", "x"}, {"effect", "NoSchedule"}}}}}),
                        TierRule{}),
      ReadInventoryNode(Node("prefer-taint", a40, true,
                             {{"taints", {{{"key", "dedicated"}, {"effect", "PreferNoSchedule"}}}}}),
                        TierRule{}),
      ReadInventoryNode(Node("no-allocatable", a40, true, nlohmann::json::object(), nlohmann::json::object()),
                        TierRule{}),
      ReadInventoryNode(Node("cpu", Labels{}, true, nlohmann::json::object(), nlohmann::json::object()), TierRule{}),
  };
  std::vector<std::string> usable;
  for (const auto& n : UsableGpuNodes(nodes)) usable.push_back(n.name);
  EXPECT_EQ(usable, (std::vector<std::string>{"ok", "gpu-taint", "prefer-taint", "no-allocatable"}));
  EXPECT_EQ(nodes[6].gpus, 4) << "falls back to GFD's gpu.count";
  EXPECT_EQ(nodes[0].tier, "attention");

  nlohmann::json tolerate = {{{"key", "dedicated"}, {"operator", "Equal"}, {"value", "x"}}};
  usable.clear();
  for (const auto& n : UsableGpuNodes(nodes, tolerate)) usable.push_back(n.name);
  EXPECT_EQ(usable.size(), 5u) << "a template toleration admits the tainted node";
}

TEST(Tolerations, Matching) {
  nlohmann::json taint = {{"key", "k"}, {"value", "v"}, {"effect", "NoSchedule"}};
  EXPECT_TRUE(Tolerates(nlohmann::json::array({{{"key", "k"}, {"operator", "Exists"}}}), taint));
  EXPECT_TRUE(Tolerates(nlohmann::json::array({{{"operator", "Exists"}}}), taint));
  EXPECT_TRUE(Tolerates(nlohmann::json::array({{{"key", "k"}, {"value", "v"}}}), taint));
  EXPECT_FALSE(Tolerates(nlohmann::json::array({{{"key", "k"}, {"value", "w"}}}), taint));
  EXPECT_FALSE(Tolerates(nlohmann::json::array({{{"key", "k"}, {"operator", "Exists"}, {"effect", "NoExecute"}}}), taint));
  EXPECT_FALSE(Tolerates(nlohmann::json::array(), taint));
}

}  // namespace
}  // namespace hetermoe::op
