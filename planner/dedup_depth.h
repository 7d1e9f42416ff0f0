// HierMoE's depth choice for token deduplication: how far up the hierarchy
// (expert rank, node) a layer's dispatch deduplicates, chosen by an
// alpha-beta model of the links. Pure logic, no I/O.
//
// A message of b bytes over a link takes alpha + beta b (alpha: per-message
// time, beta: time per byte), fitted by least squares from measured
// transfers (FitLinkCost). For one block (an attention rank's rows of one
// layer and micro-batch) the engine counts, over the routes (a node whose
// expert ranks, two or more, hold the layer's experts, on another node than
// the attention rank), what either depth would send:
//   rank: one message per route owner across nodes, carrying the owner's
//         unique tokens;
//   node: one message per route owner across nodes too (the node's unique
//         tokens to the first owner, a word saying "relayed" to the others),
//         plus one per other route owner inside the node (the relay's
//         second hop) carrying that owner's unique tokens.
// The dispatch and the input grads' way back carry the same rows, so the
// comparison holds for both. A block takes node when its predicted time is
// lower by more than kNodeMargin; with equal links the extra hop never pays
// (a node's unique tokens are at least its first owner's, and it sends as
// many messages), so equal links keep rank, also when the fitted per-message
// times differ by the measurement's noise.
#pragma once

#include <cstdint>
#include <vector>

namespace hetermoe::planner {

struct LinkCost {
  double alpha = 0;  // seconds per message
  double beta = 0;   // seconds per byte
  double Seconds(double messages, double bytes) const { return alpha * messages + beta * bytes; }
};

// Least squares fit of seconds = alpha + beta * bytes (at least two distinct
// sizes). A negative alpha clamps to 0; where noise leaves no positive
// slope, alpha is 0 and beta the fastest rate seen (seconds / bytes), so
// the link is never taken as infinitely fast. Throws hetermoe::Error when
// no transfer took measurable time.
LinkCost FitLinkCost(const std::vector<double>& bytes, const std::vector<double>& seconds);

// One block's traffic over its routes, as each depth would send it (rows;
// messages); the planner sums it over a layer's blocks.
struct RouteTraffic {
  double rank_rows = 0, rank_messages = 0;        // to the route owners, across nodes
  double node_rows = 0, node_messages = 0;        // to the routes' first owners, across nodes
  double relayed_rows = 0, relayed_messages = 0;  // inside the nodes
};

// Node level must be predicted this much faster (a share of rank level's time).
inline constexpr double kNodeMargin = 0.05;

struct DepthPrediction {
  double rank_seconds = 0, node_seconds = 0;
  bool node = false;  // node is faster by more than kNodeMargin
};

DepthPrediction PredictDepth(const RouteTraffic& traffic, const LinkCost& inter_node, const LinkCost& intra_node,
                             double row_bytes);

}  // namespace hetermoe::planner
