// Node-level deduplication's routes (engine.h, SetDedup kNode): which expert
// ranks of a layer an attention rank on another node reaches through one
// relay. Pure logic, no I/O.
//
// A route is a run of expert ranks (local indices, ascending) on one node
// whose expert ranges are adjacent, so that one dispatch block covers them;
// ranks of a node that are not next to each other (pods scheduled so) form
// separate runs. Runs of one rank are no route: they are reached directly.
// Under zebra and sequential attention ranks are never route owners (their
// Asym-EA experts are reached directly); under ep every rank is an attention
// rank and an owner, and any of them may be in a route.
#pragma once

#include <cstdint>
#include <vector>

#include "trainer/parallel/placement.h"

namespace hetermoe::parallel {

struct NodeRoute {
  int node = 0;
  std::vector<int> owners;  // local indices, ascending; owners[0] relays
  int64_t first_expert = 0, experts = 0;
};

// [layer] the routes of a group; `node_of` gives each local index's node
// (or, for dedup at the level below, its switch: any grouping works).
std::vector<std::vector<NodeRoute>> MakeNodeRoutes(const Placement& placement, const std::vector<int>& node_of);

}  // namespace hetermoe::parallel
