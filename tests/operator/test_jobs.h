// Shared fixtures for the operator's unit tests: a small but complete
// HeterMoEJob (the tiny Mixtral from examples/tiny), GPU nodes, pods.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "operator/api/hetermoejob.h"
#include "operator/core/node_inventory.h"

namespace hetermoe::op::fixtures {

inline const char* kTinyModel =
    R"({"model_type":"mixtral","vocab_size":256,"hidden_size":128,"intermediate_size":256,)"
    R"("num_hidden_layers":4,"num_attention_heads":4,"num_key_value_heads":2,"num_local_experts":8,)"
    R"("num_experts_per_tok":2,"max_position_embeddings":1024})";

inline nlohmann::json TinyJobJson(const std::string& name = "tiny", const std::string& ns = "team-a") {
  return nlohmann::json{
      {"apiVersion", "hetermoe.io/v1alpha1"},
      {"kind", "HeterMoEJob"},
      {"metadata", {{"name", name}, {"namespace", ns}, {"uid", "uid-" + name}, {"generation", 1},
                    {"resourceVersion", "100"}, {"creationTimestamp", "2025-05-20T10:00:00Z"}}},
      {"spec",
       {{"attention", {{"replicas", 2}, {"gpusPerReplica", 1},
                       {"template", {{"spec", {{"containers", {{{"name", "trainer"}, {"image", "hetermoe/trainer:0.1"}}}}}}}}}},
        {"expert", {{"replicas", 4}, {"gpusPerReplica", 1},
                    {"template", {{"metadata", {{"labels", {{"team", "a"}}}}},
                                  {"spec", {{"containers", {{{"name", "trainer"}, {"image", "hetermoe/trainer:0.1"}}}}}}}}}},
        {"model", {{"config", kTinyModel}}},
        {"training", {{"data", "/data/tokens.bin"}, {"steps", 100}, {"globalBatch", 16}, {"microBatches", 2},
                      {"seqLen", 128}}},
        {"checkpoint", {{"claimName", "ckpt"}, {"intervalSteps", 50}}},
        {"runPolicy", {{"backoffLimit", 2}}}}}};
}

inline HeterMoEJob TinyJob(const std::string& name = "tiny") { return ParseJob(TinyJobJson(name)); }

inline nlohmann::json GpuNodeJson(const std::string& name, const std::string& product, int major, int minor, int gpus) {
  return {{"metadata",
           {{"name", name},
            {"labels",
             {{"nvidia.com/gpu.present", "true"},
              {"nvidia.com/gpu.product", product},
              {"nvidia.com/gpu.compute.major", std::to_string(major)},
              {"nvidia.com/gpu.compute.minor", std::to_string(minor)},
              {"nvidia.com/gpu.count", std::to_string(gpus)}}}}},
          {"spec", nlohmann::json::object()},
          {"status",
           {{"allocatable", {{"nvidia.com/gpu", std::to_string(gpus)}}},
            {"conditions", {{{"type", "Ready"}, {"status", "True"}}}}}}};
}

// Two A40 nodes (attention tier) and two V100 nodes (expert tier), 4 GPUs each.
inline std::vector<InventoryNode> A40V100Nodes() {
  std::vector<InventoryNode> nodes;
  for (int i = 0; i < 2; ++i) {
    nodes.push_back(ReadInventoryNode(GpuNodeJson("a40-" + std::to_string(i), "NVIDIA-A40", 8, 6, 4), TierRule{}));
    nodes.push_back(
        ReadInventoryNode(GpuNodeJson("v100-" + std::to_string(i), "Tesla-V100-SXM2-32GB", 7, 0, 4), TierRule{}));
  }
  return nodes;
}

}  // namespace hetermoe::op::fixtures
