// The planner end to end on in-memory inputs: roles, groups and placement
// are consistent; budgets and options are honoured; impossible requests are
// refused with a reason.
#include "planner/planner.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "common/error.h"
#include "planner/plan_json.h"
#include "planner/zp_group.h"
#include "tests/planner/test_clusters.h"
#include "tests/planner/test_models.h"

namespace hetermoe::planner {
namespace {

using testing::Cluster;
using testing::Request;

std::string ErrorOf(const PlanRequest& request, const GpuProfileTable& table) {
  try {
    MakePlan(request, table);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// Whether GPU kind `gpu` fills a role of kind or pool `role` ("H100+A40").
bool InRole(const std::string& gpu, const std::string& role) {
  size_t begin = 0;
  while (begin <= role.size()) {
    const size_t end = std::min(role.find('+', begin), role.size());
    if (role.substr(begin, end - begin) == gpu) return true;
    begin = end + 1;
  }
  return false;
}

// Invariants every plan keeps.
void ExpectConsistent(const Plan& plan, const Inventory& inventory) {
  std::set<std::pair<std::string, int>> seen;
  int64_t capacity = 0;
  for (const ZpGroup& g : plan.groups) {
    ASSERT_LT(g.group_class, static_cast<int>(plan.classes.size()));
    const GroupShape& s = plan.classes[g.group_class].shape;
    EXPECT_EQ(static_cast<int>(g.attention.size()), s.attention_ranks);
    EXPECT_EQ(static_cast<int>(g.expert.size()), s.expert_ranks);
    for (const GpuSlot& slot : g.attention) {
      EXPECT_TRUE(InRole(slot.gpu, s.attention_gpu)) << slot.gpu << " in " << s.attention_gpu;
      EXPECT_TRUE(seen.insert({slot.node, slot.gpu_index}).second) << slot.node << ":" << slot.gpu_index;
    }
    for (const GpuSlot& slot : g.expert) {
      EXPECT_TRUE(InRole(slot.gpu, s.expert_gpu)) << slot.gpu << " in " << s.expert_gpu;
      EXPECT_TRUE(seen.insert({slot.node, slot.gpu_index}).second) << slot.node << ":" << slot.gpu_index;
    }
    capacity += static_cast<int64_t>(s.attention_ranks) * s.sequences_per_attention_rank;
  }
  for (const GpuSlot& slot : plan.unused) EXPECT_TRUE(seen.insert({slot.node, slot.gpu_index}).second);
  EXPECT_EQ(static_cast<int>(seen.size()), inventory.TotalGpus());
  EXPECT_GE(capacity, plan.global_batch);  // every sequence has an attention rank

  for (const GroupClass& c : plan.classes) {
    const GroupShape& s = c.shape;
    EXPECT_EQ(s.sequences_per_attention_rank % s.micro_batches, 0);
    if (c.asym_ea_used) {
      EXPECT_TRUE(AsymEaShapeOk(s.attention_ranks, s.expert_ranks));
    }
    ASSERT_EQ(static_cast<int64_t>(c.placement.size()), plan.model.layers);
    for (size_t l = 0; l < c.placement.size(); ++l) {
      // Every expert of the layer lives on exactly one rank of the group.
      std::multiset<int> ids;
      int on_attention = 0;
      for (const auto& rank : c.placement[l].expert_ranks) ids.insert(rank.begin(), rank.end());
      for (const auto& rank : c.placement[l].attention_ranks) {
        ids.insert(rank.begin(), rank.end());
        on_attention += static_cast<int>(rank.size());
      }
      EXPECT_EQ(static_cast<int64_t>(ids.size()), plan.model.experts);
      EXPECT_EQ(static_cast<int64_t>(std::set<int>(ids.begin(), ids.end()).size()), plan.model.experts);
      EXPECT_EQ(on_attention, s.offloaded.empty() ? 0 : s.offloaded[l]);
    }
  }
  EXPECT_NEAR(plan.predicted.tokens_per_second, plan.global_batch * plan.seq_len / plan.predicted.step_seconds, 1e-6);
  for (const auto& [kind, u] : plan.predicted.utilisation) {
    EXPECT_GT(u, 0) << kind;
    EXPECT_LE(u, 1) << kind;
  }
}

TEST(Planner, PaperClusterNewerGpusTakeAttentionOlderTakeExperts) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const Inventory inventory = Cluster({{"A40", 6, 2}, {"V100", 6, 2}});
  const Plan plan = MakePlan(Request(inventory, testing::W1(), 16384, 24), table);
  EXPECT_EQ(plan.attention_kinds, (std::vector<std::string>{"A40"}));
  EXPECT_EQ(plan.expert_kinds, (std::vector<std::string>{"V100"}));
  EXPECT_EQ(plan.precision, Precision::kFp16);  // V100 has no bf16
  ExpectConsistent(plan, inventory);
  EXPECT_TRUE(plan.unused.empty());
  EXPECT_GT(plan.classes[0].shape.micro_batches, 1);
  ASSERT_TRUE(plan.baselines.ep.feasible);
  EXPECT_GT(plan.predicted.tokens_per_second, plan.baselines.ep.tokens_per_second);
  EXPECT_GT(plan.predicted.tokens_per_second, plan.baselines.pp.tokens_per_second);
  // The timeline is the first class's zebra step.
  EXPECT_FALSE(plan.timeline.Find("attention")->intervals.empty());
}

TEST(Planner, AsymEaCanBeTurnedOffAndIsUsedOnlyWhenItHelps) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const Inventory inventory = Cluster({{"A40", 6, 2}, {"V100", 6, 2}});
  PlanRequest request = Request(inventory, testing::W1(), 4096, 24);
  const Plan with = MakePlan(request, table);
  request.asym_ea = false;
  const Plan without = MakePlan(request, table);
  for (const GroupClass& c : without.classes) EXPECT_FALSE(c.asym_ea_used);
  EXPECT_GE(with.predicted.tokens_per_second, without.predicted.tokens_per_second);
}

TEST(Planner, OneKindClusterSplitsTheKindIntoBothRoles) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const Inventory inventory = Cluster({{"A40", 4, 4}});
  const Plan plan = MakePlan(Request(inventory, testing::D1(), 8192, 8), table);
  EXPECT_EQ(plan.classes[0].shape.attention_gpu, "A40");
  EXPECT_EQ(plan.classes[0].shape.expert_gpu, "A40");
  EXPECT_EQ(plan.precision, Precision::kBf16);
  ExpectConsistent(plan, inventory);
}

TEST(Planner, GpuBudgetCapsTheGpusUsed) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const Inventory inventory = Cluster({{"A40", 6, 2}, {"V100", 6, 2}});
  PlanRequest request = Request(inventory, testing::D1(), 8192, 24);
  request.gpu_budget = 6;
  const Plan plan = MakePlan(request, table);
  ExpectConsistent(plan, inventory);
  EXPECT_LE(12 - static_cast<int>(plan.unused.size()), 6);
}

TEST(Planner, FourKindsCanShareARoleWithoutSharingAGpu) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const Inventory inventory = Cluster({{"H100", 16, 8}, {"A100-80GB", 16, 8}, {"V100", 32, 8}, {"T4", 32, 8}});
  const Plan plan = MakePlan(Request(inventory, testing::D1(), 4096, 256), table);
  ExpectConsistent(plan, inventory);
  EXPECT_FALSE(plan.attention_kinds.empty());
  EXPECT_FALSE(plan.expert_kinds.empty());
  // One kind in both roles, or roles with no kind in common.
  if (plan.attention_kinds != plan.expert_kinds || plan.attention_kinds.size() != 1) {
    for (const std::string& kind : plan.attention_kinds) {
      EXPECT_EQ(std::count(plan.expert_kinds.begin(), plan.expert_kinds.end(), kind), 0) << kind << " in both roles";
    }
  }
  EXPECT_GT(plan.predicted.tokens_per_second, 0);
}

TEST(Planner, APoolRunsAtItsSlowestMembersPace) {
  // 4 H100 + 4 A100 as one attention role: priced as 8 A100s would be, with
  // the smaller memory, and placed on both kinds.
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const Inventory inventory = Cluster({{"H100", 4, 4}, {"A100-80GB", 4, 4}, {"V100", 8, 8}});
  const PlanningContext ctx(testing::D1(), inventory, table, 8192, Precision::kFp16);
  const KindContext& pool = ctx.Kind("H100+A100-80GB");
  EXPECT_EQ(pool.count, 8);
  EXPECT_EQ(pool.members, (std::vector<std::string>{"H100", "A100-80GB"}));
  const double h100 = ctx.Kind("H100").cost->Attention(2).Total();
  const double a100 = ctx.Kind("A100-80GB").cost->Attention(2).Total();
  EXPECT_LT(h100, a100);
  EXPECT_DOUBLE_EQ(pool.cost->Attention(2).Total(), a100);
  EXPECT_DOUBLE_EQ(pool.gpu.memory_gib, std::min(ctx.Kind("H100").gpu.memory_gib, ctx.Kind("A100-80GB").gpu.memory_gib));
  const std::vector<std::string> roles = ctx.RoleKinds();
  EXPECT_EQ(roles.size(), 3u + 4u);  // 3 kinds, 3 pairs and the triple
}

TEST(Planner, SameInputSamePlan) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const PlanRequest request = Request(Cluster({{"A40", 4, 2}, {"V100", 8, 2}}), testing::W1(), 8192, 24);
  EXPECT_EQ(PlanToJson(MakePlan(request, table)).dump(), PlanToJson(MakePlan(request, table)).dump());
}

TEST(Planner, RefusesAModelThatDoesNotFitAndSaysWhy) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  // 240 sequences of 32K tokens on six A40s: the activations alone overflow.
  const std::string error =
      ErrorOf(Request(Cluster({{"A40", 6, 2}, {"V100", 6, 2}}), testing::W1(), 32768, 240), table);
  EXPECT_NE(error.find("does not fit"), std::string::npos) << error;
  EXPECT_NE(error.find("GiB"), std::string::npos) << error;
  EXPECT_NE(error.find("lower --global-batch or --seq-len"), std::string::npos) << error;

  // Experts of a big model on small GPUs: too many for the expert ranks even
  // with Asym-EA moving every expert the attention ranks can take.
  ModelShape big = testing::MixtralShape(32, 4096, 8, "big.json");
  const std::string experts = ErrorOf(Request(Cluster({{"T4", 2, 2}}), big, 4096, 2), table);
  EXPECT_NE(experts.find("does not fit"), std::string::npos) << experts;
}

TEST(Planner, RefusesImpossibleRequests) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  const Inventory two = Cluster({{"A40", 1, 1}, {"V100", 1, 1}});

  PlanRequest r = Request(two, testing::W1(), 4096, 8);
  r.gpu_budget = 1;
  EXPECT_NE(ErrorOf(r, table).find("gpu-budget 1"), std::string::npos);

  r = Request(two, testing::W1(), 131072, 8);
  EXPECT_EQ(ErrorOf(r, table), "W1: max_position_embeddings 65536 is shorter than seq-len 131072");

  r = Request(two, testing::W1(), 4096, 0);
  EXPECT_EQ(ErrorOf(r, table), "global-batch 0 is not positive");

  r = Request(two, testing::W1(), 0, 8);
  EXPECT_EQ(ErrorOf(r, table), "seq-len 0 is not positive");

  r = Request(Cluster({{"A40", 1, 1}}, "one.yaml"), testing::W1(), 4096, 8);
  EXPECT_NE(ErrorOf(r, table).find("one.yaml: 1 GPU(s)"), std::string::npos);

  r = Request(Cluster({{"K80", 4, 4}}, "old.yaml"), testing::W1(), 4096, 8);
  EXPECT_NE(ErrorOf(r, table).find("old.yaml: nodes[0] (k80-0): unknown GPU kind 'K80'"), std::string::npos);
}

}  // namespace
}  // namespace hetermoe::planner
