// Node-level dedup's routes: runs of consecutive expert ranks on one node,
// whatever order the pods landed in; a rank alone in its run, attention
// ranks and the ep schedule have none.
#include "trainer/parallel/node_routes.h"

#include <gtest/gtest.h>

namespace hetermoe::parallel {
namespace {

TEST(NodeRoutes, RunsOfExpertRanksOnOneNode) {
  // 1 attention + 4 expert ranks, 8 experts (2 each), 2 layers.
  const Placement p = MakePlacement(Schedule::kZebra, 1, 4, 1, 2, 8, 4, {});
  // Attention rank with expert rank 1 on node 0; ranks 2, 3, 4 on node 1.
  const auto routes = MakeNodeRoutes(p, {0, 0, 1, 1, 1});
  ASSERT_EQ(routes.size(), 2u);
  ASSERT_EQ(routes[0].size(), 1u) << "rank 1 is alone among node 0's expert ranks";
  EXPECT_EQ(routes[0][0].node, 1);
  EXPECT_EQ(routes[0][0].owners, (std::vector<int>{2, 3, 4}));
  EXPECT_EQ(routes[0][0].first_expert, 2);
  EXPECT_EQ(routes[0][0].experts, 6);
  // Pods scheduled out of order: node 1 holds ranks 1 and 3, node 2 ranks 2 and 4.
  const auto mixed = MakeNodeRoutes(p, {0, 1, 2, 1, 2});
  EXPECT_TRUE(mixed[0].empty()) << "no two adjacent expert ranks share a node";
  const auto half = MakeNodeRoutes(p, {0, 1, 1, 2, 1});
  ASSERT_EQ(half[1].size(), 1u);
  EXPECT_EQ(half[1][0].owners, (std::vector<int>{1, 2}));
  EXPECT_EQ(half[1][0].experts, 4);
}

TEST(NodeRoutes, AttentionOwnersOnlyUnderEp) {
  // Asym-EA: the attention rank holds 2 experts of layer 0, on the node of expert ranks 1 and 2.
  const Placement asym = MakePlacement(Schedule::kZebra, 1, 2, 1, 1, 8, 2, {2});
  const auto routes = MakeNodeRoutes(asym, {0, 0, 0});
  ASSERT_EQ(routes[0].size(), 1u);
  EXPECT_EQ(routes[0][0].owners, (std::vector<int>{1, 2})) << "the attention rank is reached directly";
  EXPECT_EQ(routes[0][0].experts, 6);
  // ep: every rank attends and holds experts; each node's pair is a route
  // for the attention ranks of the other node.
  const Placement ep = MakePlacement(Schedule::kEp, 2, 2, 1, 1, 8, 4, {});
  const auto ep_routes = MakeNodeRoutes(ep, {0, 0, 1, 1});
  ASSERT_EQ(ep_routes[0].size(), 2u);
  EXPECT_EQ(ep_routes[0][0].owners, (std::vector<int>{0, 1}));
  EXPECT_EQ(ep_routes[0][1].owners, (std::vector<int>{2, 3}));
  EXPECT_EQ(ep_routes[0][1].first_expert, 4);
  EXPECT_TRUE(MakeNodeRoutes(ep, {0, 1, 2, 3})[0].empty()) << "one rank per node: nothing to relay";
}

}  // namespace
}  // namespace hetermoe::parallel
