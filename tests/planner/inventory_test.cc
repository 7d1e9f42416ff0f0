// The inventory YAML and the profiles YAML: what they accept, and the one-line
// errors that name the file, the field and the problem.
#include "planner/inventory.h"

#include <gtest/gtest.h>

#include "common/error.h"
#include "planner/cost_model.h"
#include "planner/profiles_yaml.h"
#include "tests/planner/test_models.h"

namespace hetermoe::planner {
namespace {

std::string ErrorOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Inventory, ReadsNodesNetworkAndCanonicalKinds) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const Inventory inv = ParseInventoryYaml(R"(
network: {nic_gbps: 200, latency_us: 5}
nodes:
  - {name: a40-0, gpu: nvidia-a40, count: 4}
  - {name: v100-0, gpu: V100, count: 8, nic_gbps: 100}
  - {name: v100-1, gpu: Tesla-V100-SXM2-32GB, count: 2}
)", "cluster.yaml", table);
  ASSERT_EQ(inv.nodes.size(), 3u);
  EXPECT_EQ(inv.nodes[0].gpu, "A40");
  EXPECT_EQ(inv.nodes[2].gpu, "V100");
  EXPECT_EQ(inv.TotalGpus(), 14);
  EXPECT_EQ(inv.Count("V100"), 10);
  EXPECT_EQ(inv.Kinds(), (std::vector<std::string>{"A40", "V100"}));
  EXPECT_EQ(inv.MaxGpusPerNode("V100"), 8);
  EXPECT_DOUBLE_EQ(inv.nic_gbps, 200);
  EXPECT_DOUBLE_EQ(inv.latency_us, 5);
  EXPECT_DOUBLE_EQ(inv.SlowestNicGbps("V100"), 100);
  EXPECT_DOUBLE_EQ(inv.SlowestNicGbps("A40"), 200);
}

TEST(Inventory, EntriesOfOneMachineShareAHost) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const Inventory inv = ParseInventoryYaml(R"(
nodes:
  - {name: mix-0-a40, host: mix-0, gpu: A40, count: 4}
  - {name: mix-0-v100, host: mix-0, gpu: V100, count: 4}
  - {name: v100-9, gpu: V100, count: 8}
)", "cluster.yaml", table);
  EXPECT_EQ(inv.nodes[0].Host(), "mix-0");
  EXPECT_EQ(inv.nodes[1].Host(), "mix-0");
  EXPECT_EQ(inv.nodes[2].Host(), "v100-9");  // no host: its own machine
  EXPECT_NE(ErrorOf([&] {
              ParseInventoryYaml("nodes:\n  - {name: a, host: m, gpu: A40, count: 2}\n"
                                 "  - {name: b, host: m, gpu: nvidia-a40, count: 2}\n",
                                 "cluster.yaml", table);
            }).find("cluster.yaml: nodes[1] (b): host 'm' already has an entry for A40"),
            std::string::npos);
}

TEST(Inventory, BadInputsGiveOneLineErrorsNamingFileAndField) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const struct {
    const char* yaml;
    const char* expected;
  } cases[] = {
      {"nodes:\n  - {name: n0, gpu: K80, count: 4}\n", "cluster.yaml: nodes[0] (n0): unknown GPU kind 'K80'"},
      {"nodes:\n  - {name: n0, gpu: A40, count: 4}\n  - {name: n0, gpu: V100, count: 2}\n",
       "cluster.yaml: nodes[1]: node 'n0' is listed twice"},
      {"nodes:\n  - {name: n0, gpu: A40, count: 0}\n", "cluster.yaml: nodes[0].count: must be between 1 and"},
      {"nodes:\n  - {name: n0, gpu: A40, count: four}\n", "cluster.yaml: nodes[0].count: expected an integer, got 'four'"},
      {"nodes:\n  - {name: n0, count: 4}\n", "cluster.yaml: nodes[0].gpu: missing"},
      {"nodes:\n  - {name: n0, gpus: A40, count: 4}\n", "cluster.yaml: nodes[0]: unknown key 'gpus'"},
      {"nodes: {name: n0}\n", "cluster.yaml: nodes: expected a list"},
      {"nodes: []\n", "cluster.yaml: no nodes"},
      {"", "cluster.yaml: empty inventory"},
      {"nodes: [\n", "cluster.yaml: invalid YAML at line"},
      {"nodes:\n  - {name: n0, gpu: A40, count: 4, nic_gbps: -1}\n", "cluster.yaml: nodes[0].nic_gbps: must be positive"},
      {"network: {nic_gbps: 0}\nnodes:\n  - {name: n0, gpu: A40, count: 4}\n", "cluster.yaml: network.nic_gbps must be positive"},
      {"nodes:\n  - {name: n0, gpu: A40, count: 4}\ncluster: x\n", "cluster.yaml: unknown key 'cluster'"},
  };
  for (const auto& c : cases) {
    const std::string error = ErrorOf([&] { ParseInventoryYaml(c.yaml, "cluster.yaml", table); });
    EXPECT_EQ(error.rfind(c.expected, 0), 0u) << "input:\n" << c.yaml << "error: " << error;
    EXPECT_EQ(error.find('\n'), std::string::npos) << error;
  }
  EXPECT_NE(ErrorOf([&] { LoadInventory("/nonexistent/cluster.yaml", table); }).find("cannot open"),
            std::string::npos);
}

TEST(ProfilesYaml, OverridesAFieldOfABuiltinKind) {
  GpuProfileTable table = GpuProfileTable::Builtin();
  ApplyProfilesYaml("gpus:\n  - {kind: a40, gemm_efficiency: 0.7, memory_gib: 46}\n", "p.yaml", table);
  EXPECT_DOUBLE_EQ(table.Find("A40").gemm_efficiency, 0.7);
  EXPECT_DOUBLE_EQ(table.Find("A40").memory_gib, 46);
  EXPECT_DOUBLE_EQ(table.Find("A40").peak_fp16_tflops, 149.7);  // untouched
}

TEST(ProfilesYaml, AddsAKindFromABaseWithAliasesUsableInTheInventory) {
  GpuProfileTable table = GpuProfileTable::Builtin();
  ApplyProfilesYaml(R"(
gpus:
  - kind: RTX6000-Ada
    base: L40S
    aliases: [NVIDIA-RTX-6000-Ada-Generation]
    peak_fp16_tflops: 364.2
    attention_efficiency: {4096: 0.4, 65536: 0.55}
)", "p.yaml", table);
  const GpuProfile& p = table.Find("nvidia-rtx-6000-ada-generation");
  EXPECT_EQ(p.kind, "RTX6000-Ada");
  EXPECT_DOUBLE_EQ(p.peak_fp16_tflops, 364.2);
  EXPECT_DOUBLE_EQ(p.memory_gib, 48);  // from L40S
  EXPECT_NEAR(p.attention_efficiency.At(16384), 0.475, 1e-12);
  const Inventory inv = ParseInventoryYaml("nodes:\n  - {name: w0, gpu: NVIDIA-RTX-6000-Ada-Generation, count: 4}\n",
                                           "cluster.yaml", table);
  EXPECT_EQ(inv.nodes[0].gpu, "RTX6000-Ada");
}

TEST(ProfilesYaml, MeasuredTimesReachTheCostModel) {
  GpuProfileTable table = GpuProfileTable::Builtin();
  ApplyProfilesYaml(R"(
measured:
  - gpu: V100
    model: {hidden_size: 2048, intermediate_size: 7168, num_attention_heads: 16,
            num_key_value_heads: 4, num_local_experts: 12}
    seq_len: 16384
    attention: {sequences: 1, forward_seconds: 0.05, backward_seconds: 0.1}
    expert: {tokens: 5461, forward_seconds: 0.004, backward_seconds: 0.008}
    memory: {expert_bytes: 7.0e8, expertless_model_bytes: 2.8e9}
)", "p.yaml", table);
  const ModelShape w1 = testing::W1();
  const MeasuredProfile* m = FindMeasured(table, "V100", w1, 16384);
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->expert_tokens, 5461);
  EXPECT_DOUBLE_EQ(m->expertless_model_bytes, 2.8e9);
  const ComputeCostModel cost(w1, table.Find("V100"), Precision::kFp16, 16384, m);
  EXPECT_DOUBLE_EQ(cost.Attention(2).forward, 0.1);
}

TEST(ProfilesYaml, BadProfilesAreRefusedWithTheirLocation) {
  const struct {
    const char* yaml;
    const char* expected;
  } cases[] = {
      {"gpus:\n  - {kind: X1, peak_fp16_tflops: 100}\n", "p.yaml: gpus[0].memory_gib: missing (a new GPU kind needs it"},
      {"gpus:\n  - {kind: A40, gemm_efficiency: 1.5}\n", "p.yaml: gpus[0].gemm_efficiency: must be a fraction of peak"},
      {"gpus:\n  - {kind: A40, attention_efficiency: {4096: 0}}\n", "p.yaml: gpus[0].attention_efficiency: efficiencies must"},
      {"gpus:\n  - {kind: X1, base: K80}\n", "p.yaml: gpus[0].base: unknown GPU kind 'K80'"},
      {"gpus:\n  - {kind: A40, speed: 3}\n", "p.yaml: gpus[0]: unknown key 'speed'"},
      {"measured:\n  - {gpu: K80}\n", "p.yaml: measured[0].gpu: unknown GPU kind 'K80'"},
      {"measured:\n  - {gpu: A40}\n", "p.yaml: measured[0].model: missing"},
      {"measured:\n  - gpu: A40\n    model: {hidden_size: 1, intermediate_size: 1, num_attention_heads: 1,\n"
       "            num_key_value_heads: 1, num_local_experts: 1}\n    attention: {forward_seconds: 1, backward_seconds: 1}\n",
       "p.yaml: measured[0].seq_len: needed with an attention measurement"},
      {"gpu: A40\n", "p.yaml: unknown key 'gpu'"},
  };
  for (const auto& c : cases) {
    GpuProfileTable table = GpuProfileTable::Builtin();
    const std::string error = ErrorOf([&] { ApplyProfilesYaml(c.yaml, "p.yaml", table); });
    EXPECT_EQ(error.rfind(c.expected, 0), 0u) << "input:\n" << c.yaml << "error: " << error;
  }
}

}  // namespace
}  // namespace hetermoe::planner
