// The plan file: a Plan as JSON, the form the trainer reads and the operator
// stores in a ConfigMap. Fields (all times in seconds):
//
//   format             "hetermoe-plan/1"
//   model              {config, layers, experts, top_k, hidden_size, intermediate_size}
//   seq_len, global_batch
//   precision          {<gpu kind>: "fp16" | "bf16"}
//   roles              {attention: [kinds], expert: [kinds]}
//   micro_batches      R of group class 0 (every class lists its own)
//   asym_ea            experts moved to attention ranks per layer, group class 0
//   group_classes      [{attention_gpu, expert_gpu, attention_ranks (M), expert_ranks (N),
//                        groups, sequences_per_attention_rank, micro_batches,
//                        asym_ea: {used, offloaded[], n1, n2, t_gather_seconds,
//                                  t_squeeze_seconds, alpha, beta},
//                        placement: [{layer, expert_ranks: [[ids]], attention_ranks: [[ids]]}],
//                        step_seconds, busy: {attention, expert},
//                        memory: {n_min, n_max, attention_rank_bytes, attention_usable_bytes,
//                                 expert_usable_bytes, experts_per_expert_rank}}]
//   groups             [{class, attention: [{node, gpu_index}], expert: [{node, gpu_index}]}]
//   unused             [{node, gpu_index, gpu}]
//   predicted          {step_seconds, tokens_per_second, utilisation: {<kind>: fraction}}
//   baselines          {ep, distep, ep_ideal, pp: {feasible, tokens_per_second, step_seconds, note}}
//   speedup            {over_ep, over_distep, over_ep_ideal, over_pp} (0 when infeasible)
//   notes              [strings]
//   search             {shapes_enumerated, shapes_priced, alternatives: the
//                      next best shapes [{shape, sequences_per_attention_rank,
//                      micro_batches, step_seconds}] (the first is the
//                      runner-up), refused: [{shape, sequences_per_attention_rank,
//                      reason}]}
//   timeline           (with_timeline only) [{resource, busy_seconds,
//                        intervals: [{op, layer, micro_batch, backward, start, end}]}]
#pragma once

#include <nlohmann/json.hpp>

#include "planner/plan.h"

namespace hetermoe::planner {

nlohmann::json PlanToJson(const Plan& plan, bool with_timeline = false);

}  // namespace hetermoe::planner
