// The links a run measured for HierMoE's depth choice (parallel.dedup auto,
// planner/dedup_depth.h) as a JSON profile: the trainer writes it to
// <output.dir>/links.json, a later run loads it instead of measuring
// (parallel.links_profile), and hetermoe-plan --links prices transfers with
// it. Pure: text in, text out.
//
//   {"format": "hetermoe-links/1", "measured_over": "gloo",
//    "inter_node": {"latency_us": 104.2, "gbps": 0.39},
//    "intra_node": {"latency_us": 104.2, "gbps": 19.6}}
#pragma once

#include <string>

#include "planner/dedup_depth.h"

namespace hetermoe::planner {

struct MeasuredLinks {
  LinkCost inter_node, intra_node;
  std::string measured_over;  // gloo (through the hosts) | nccl (device to device)
};

std::string LinksToJson(const MeasuredLinks& links);

// Throws hetermoe::Error("<source>: ...") naming the bad field: not JSON,
// another format, a missing link, latency < 0 or bandwidth <= 0.
MeasuredLinks LinksFromJson(const std::string& text, const std::string& source);

}  // namespace hetermoe::planner
