// The profiles YAML: overrides of the built-in GPU table, new GPU kinds, and
// measured op times (the output format `hetermoe-trainer profile` is to
// write). Every section and field is optional.
//
//   gpus:
//     - kind: A40                    # an existing kind: the listed fields replace the table's
//       gemm_efficiency: 0.6
//     - kind: RTX6000-Ada            # a new kind: start from `base`, or give every field
//       base: L40S
//       aliases: [NVIDIA-RTX-6000-Ada-Generation]
//       peak_fp16_tflops: 364.2
//       peak_bf16_tflops: 364.2      # 0 = no bf16
//       memory_gib: 48
//       memory_bandwidth_gbs: 960
//       gemm_efficiency: 0.5         # fraction of peak, (0, 1]
//       attention_kernel: flash-attention-2
//       attention_efficiency: {4096: 0.45, 65536: 0.5}   # seq_len -> fraction of peak
//       intra_node_gbs: 32           # per GPU, one direction
//       intra_node_link: PCIe 4.0 x16
//       source: my measurements
//   measured:                        # from `hetermoe-trainer profile`
//     - gpu: A40
//       model: {hidden_size: 2048, intermediate_size: 7168, num_attention_heads: 16,
//               num_key_value_heads: 4, num_local_experts: 12}
//       seq_len: 16384
//       attention: {sequences: 1, forward_seconds: 0.021, backward_seconds: 0.049}  # one layer, attention + gate
//       expert: {tokens: 5461, forward_seconds: 0.0031, backward_seconds: 0.0062}   # one expert FFN
//       memory: {expert_bytes: 7.0e8, expertless_model_bytes: 2.8e9}              # with optimizer state
//
// A measurement is used only for the model it names (all five keys must
// match the planned config); its attention time only at its seq_len.
#pragma once

#include <string>

#include "planner/gpu_profiles.h"

namespace hetermoe::planner {

// Applies the document to `table`; throws hetermoe::Error "<source>: <where>: ...".
void ApplyProfilesYaml(const std::string& text, const std::string& source, GpuProfileTable& table);
void LoadProfiles(const std::string& path, GpuProfileTable& table);

}  // namespace hetermoe::planner
