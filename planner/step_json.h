// The simulator's JSON edge: one training step described by per-op times
// (and optionally message sizes with an alpha-beta link) in, the simulated
// step time and per-resource busy time out. `hetermoe-plan simulate` reads
// it; bench/validate_simulator.py builds it from traces of the distributed
// engine. Times in seconds, sizes in bytes.
//
// A step (one JSON object):
//   schedule        "zebra" | "sequential" | "ep"
//   label           optional string, echoed in the result
//   layers, micro_batches   L and R (R per attention rank; per rank under ep)
//   link            optional {latency_seconds, bytes_per_second}: the alpha-beta
//                   model that prices the transfers given in bytes (LinkModel)
// zebra and sequential (ZebraStepSpec, step_graph.h):
//   attention       {forward, backward}: A(l, j), one layer, one micro-batch
//   head            H(j), forward + backward
//   expert_rank     {forward, backward}, or a list of L of them (by layer)
//   offloaded_experts   the same, optional (Asym-EA; default none)
//   dispatch, combine   a transfer (below), or a list of L of them
//   dispatch_backward, combine_backward   the same, for the backward's
//                       exchanges (optional: default the forward's)
//   attention_sync  optional {head, layer, embedding}
//   expert_sync, offloaded_expert_sync   optional lists of L
//   attention_optimizer, expert_optimizer   optional (default 0)
// ep (EpStepSpec):
//   ranks           [{kind, attention: {forward, backward}, experts: {...} or a
//                     list of L of them (by layer), head, sync: {head, layer,
//                     embedding}, optimizer}]
//   all_to_all      a transfer
// A transfer is seconds (a number) or {bytes, peers (default 1)}, priced as
// peers x latency + bytes / bandwidth with `link`.
//
// The result: {label, schedule, step_seconds, busy: {resource: seconds}} and,
// when asked, timeline: [{resource, busy_seconds, intervals: [...]}].
//
// Unknown keys, missing required keys and negative times are errors
// (hetermoe::Error naming the key's path).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "planner/simulator.h"
#include "planner/step_graph.h"

namespace hetermoe::planner {

struct StepRequest {
  std::string label;
  Schedule schedule = Schedule::kZebra;
  ZebraStepSpec zebra;  // zebra and sequential
  EpStepSpec ep;        // ep
};

// `source` (a file name) and `path` (where `j` sits in it, e.g. "[3]"; may be
// empty) prefix error messages.
StepRequest StepRequestFromJson(const nlohmann::json& j, const std::string& source, const std::string& path = "");
StepGraph BuildStep(const StepRequest& request);
nlohmann::json SimulationToJson(const StepRequest& request, const SimulationResult& sim, bool with_timeline);
// Per-resource busy intervals (the plan file's `timeline` field).
nlohmann::json TimelineToJson(const SimulationResult& sim);

}  // namespace hetermoe::planner
