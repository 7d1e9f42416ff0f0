// The depth choice's link model (see dedup_depth.h).
#include "planner/dedup_depth.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/error.h"

namespace hetermoe::planner {

LinkCost FitLinkCost(const std::vector<double>& bytes, const std::vector<double>& seconds) {
  if (bytes.size() != seconds.size() || bytes.size() < 2) throw Error("link fit: needs two or more transfers");
  const double n = static_cast<double>(bytes.size());
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    sx += bytes[i];
    sy += seconds[i];
    sxx += bytes[i] * bytes[i];
    sxy += bytes[i] * seconds[i];
  }
  const double det = n * sxx - sx * sx;
  if (!(det > 0)) throw Error("link fit: needs transfers of two or more sizes");
  LinkCost c;
  c.beta = (n * sxy - sx * sy) / det;
  c.alpha = (sy - c.beta * sx) / n;
  if (!(c.beta > 0)) {
    // The sizes did not resolve the bandwidth (noise larger than the sizes'
    // differences): no per-message time, and the fastest rate seen.
    c.alpha = 0;
    c.beta = std::numeric_limits<double>::infinity();
    for (size_t i = 0; i < bytes.size(); ++i)
      if (bytes[i] > 0) c.beta = std::min(c.beta, std::max(seconds[i], 0.0) / bytes[i]);
    if (!(c.beta > 0) || !std::isfinite(c.beta)) throw Error("link fit: no transfer took measurable time");
  }
  c.alpha = std::max(0.0, c.alpha);
  return c;
}

DepthPrediction PredictDepth(const RouteTraffic& t, const LinkCost& inter_node, const LinkCost& intra_node,
                             double row_bytes) {
  DepthPrediction p;
  p.rank_seconds = inter_node.Seconds(t.rank_messages, t.rank_rows * row_bytes);
  p.node_seconds = inter_node.Seconds(t.node_messages, t.node_rows * row_bytes) +
                   intra_node.Seconds(t.relayed_messages, t.relayed_rows * row_bytes);
  p.node = p.node_seconds < (1.0 - kNodeMargin) * p.rank_seconds;
  return p;
}

}  // namespace hetermoe::planner
