// Node-level deduplication's routes (see node_routes.h).
#include "trainer/parallel/node_routes.h"

#include <algorithm>

namespace hetermoe::parallel {

std::vector<std::vector<NodeRoute>> MakeNodeRoutes(const Placement& placement, const std::vector<int>& node_of) {
  std::vector<std::vector<NodeRoute>> routes(placement.layers);
  // Under ep every rank is an attention rank and an owner: all may relay.
  // Under zebra and sequential only expert ranks do (an attention rank's
  // Asym-EA experts are reached directly).
  const int first_owner = placement.schedule == Schedule::kEp ? 0 : placement.attention_per_group;
  for (int l = 0; l < placement.layers; ++l) {
    std::vector<NodeRoute>& rs = routes[l];
    for (int x = first_owner; x < placement.group_size; ++x) {
      const ExpertRange& r = placement.owners[l][x];
      if (r.count == 0) continue;  // holds nothing of this layer: no gap in the ranges either
      const bool extends =
          !rs.empty() && rs.back().node == node_of[x] && r.first == rs.back().first_expert + rs.back().experts;
      if (!extends) rs.push_back({node_of[x], {}, r.first, 0});
      rs.back().owners.push_back(x);
      rs.back().experts += r.count;
    }
    rs.erase(std::remove_if(rs.begin(), rs.end(), [](const NodeRoute& r) { return r.owners.size() < 2; }), rs.end());
  }
  return routes;
}

}  // namespace hetermoe::parallel
