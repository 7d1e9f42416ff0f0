// The depth choice's link model: the least-squares fit recovers a link's
// alpha and beta from noisy transfers, and the choice takes node-level
// dedup only when the inter-node link is slower than the intra-node one by
// more than the extra hop costs.
#include "planner/dedup_depth.h"

#include <gtest/gtest.h>

#include <random>

#include "common/error.h"

namespace hetermoe::planner {
namespace {

TEST(DedupDepth, FitRecoversAlphaAndBeta) {
  std::mt19937_64 rng(5);
  std::normal_distribution<double> noise(0.0, 2e-6);
  const double alpha = 50e-6, beta = 1.0 / 1.25e9;  // 50 us, 10 Gbit/s
  std::vector<double> bytes, seconds;
  for (double b : {4096.0, 65536.0, 1048576.0, 4194304.0})
    for (int rep = 0; rep < 5; ++rep) {
      bytes.push_back(b);
      seconds.push_back(alpha + beta * b + noise(rng));
    }
  const LinkCost c = FitLinkCost(bytes, seconds);
  EXPECT_NEAR(c.alpha, alpha, 2e-6);
  EXPECT_NEAR(c.beta, beta, 0.01 * beta);
  EXPECT_THROW(FitLinkCost({4096, 4096}, {1e-3, 1e-3}), Error) << "one size cannot separate alpha from beta";
  EXPECT_THROW(FitLinkCost({4096}, {1e-3}), Error);
  // Noise larger than the sizes' differences (the big transfer ran faster):
  // the fastest rate seen, not an infinitely fast link.
  const LinkCost flat = FitLinkCost({4096, 65536}, {2e-3, 1e-3});
  EXPECT_EQ(flat.alpha, 0.0);
  EXPECT_DOUBLE_EQ(flat.beta, 1e-3 / 65536);
  EXPECT_THROW(FitLinkCost({4096, 65536}, {0.0, 0.0}), Error);
}

// A layer where node dedup saves a third of the cross-node rows but relays
// most of them again inside the node.
RouteTraffic Traffic() {
  RouteTraffic t;
  t.rank_rows = 900;  // two owners' unique tokens, 450 each
  t.rank_messages = 24;
  t.node_rows = 600;  // the node's unique tokens
  t.node_messages = 12;
  t.relayed_rows = 450;  // the second owner's, inside the node
  t.relayed_messages = 12;
  return t;
}

TEST(DedupDepth, EqualLinksKeepRankLevel) {
  const LinkCost link{20e-6, 1.0 / 1.25e9};
  const DepthPrediction p = PredictDepth(Traffic(), link, link, 4096);
  EXPECT_FALSE(p.node) << p.node_seconds << " vs " << p.rank_seconds;
  // Exactly: rank = 24 a + 900 r b; node = 24 a + 1050 r b.
  EXPECT_DOUBLE_EQ(p.rank_seconds, 24 * 20e-6 + 900 * 4096 / 1.25e9);
  EXPECT_DOUBLE_EQ(p.node_seconds, 24 * 20e-6 + 1050 * 4096 / 1.25e9);
}

TEST(DedupDepth, SlowInterNodeLinksTakeNodeLevel) {
  const LinkCost slow{20e-6, 1.0 / 1.25e9}, fast{5e-6, 1.0 / 25e9};  // 10 vs 200 Gbit/s
  const DepthPrediction p = PredictDepth(Traffic(), slow, fast, 4096);
  EXPECT_TRUE(p.node);
  EXPECT_LT(p.node_seconds, 0.75 * p.rank_seconds);
  // Per-message cost alone (tiny rows): fewer messages across nodes still wins.
  EXPECT_TRUE(PredictDepth(Traffic(), slow, fast, 0).node);
  // Per-message times a little apart (measurement noise) do not tip equal links.
  EXPECT_FALSE(PredictDepth(Traffic(), LinkCost{20e-6, 1.0 / 1.25e9}, LinkCost{19e-6, 1.0 / 1.25e9}, 4096).node);
  // Nothing to gain: no route traffic.
  EXPECT_FALSE(PredictDepth(RouteTraffic{}, slow, fast, 4096).node);
}

}  // namespace
}  // namespace hetermoe::planner
