// The plan search against its truth: the exhaustive enumeration of every
// group shape, R and Asym-EA under the same cost and memory models.
//  - The lower bound the branch and bound prunes with never exceeds a
//    shape's priced step (checked on every shape of several clusters).
//  - Over a grid of inventories (one node per kind of 4, 6, 8 and 16 GPUs;
//    2-GPU nodes; machines holding two kinds; three kinds), models (W1, D1,
//    Mixtral-8x7B), sequence lengths 4K-32K and global batches 8-64, the
//    planner's plan is within 2% of the exhaustive optimum's step, and it
//    says "no plan" exactly where the enumeration finds none. The grid is
//    printed.
//  - Whole-node inventories get groups with expert parallelism inside them
//    (the 8 A40 + 8 V100 case no longer ends in "no plan").
#include "planner/search.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <optional>
#include <set>
#include <string>

#include "common/error.h"
#include "planner/planner.h"
#include "tests/planner/test_clusters.h"
#include "tests/planner/test_models.h"

namespace hetermoe::planner {
namespace {

using testing::Cluster;

// Without the baselines: the search is what these tests look at.
PlanRequest Request(Inventory inventory, ModelShape model, int64_t seq_len, int64_t global_batch) {
  PlanRequest r = testing::Request(std::move(inventory), std::move(model), seq_len, global_batch);
  r.baselines = false;
  return r;
}

// Machines that each hold `per_kind` GPUs of two kinds (one entry per kind).
Inventory MixedMachines(int machines, const std::string& a, const std::string& b, int per_kind) {
  Inventory inventory;
  inventory.source = std::to_string(machines) + " x (" + std::to_string(per_kind) + " " + a + " + " +
                     std::to_string(per_kind) + " " + b + ") machines";
  for (int m = 0; m < machines; ++m) {
    const std::string host = "mix-" + std::to_string(m);
    inventory.nodes.push_back({host + "-" + a, a, per_kind, 0, host});
    inventory.nodes.push_back({host + "-" + b, b, per_kind, 0, host});
  }
  return inventory;
}

std::optional<Plan> TryPlan(const PlanRequest& request, SearchMode mode, std::string* error = nullptr) {
  try {
    return MakePlan(request, GpuProfileTable::Builtin(), mode);
  } catch (const Error& e) {
    if (error != nullptr) *error = e.what();
    return std::nullopt;
  }
}

std::string ShapeText(const Plan& plan) {
  const GroupShape& s = plan.classes.front().shape;
  char text[96];
  std::snprintf(text, sizeof(text), "%dx(%d %s:%d %s) S%d R%d", s.groups, s.attention_ranks,
                s.attention_gpu.c_str(), s.expert_ranks, s.expert_gpu.c_str(), s.sequences_per_attention_rank,
                s.micro_batches);
  return text;
}

TEST(Search, LowerBoundNeverExceedsThePricedStep) {
  const GpuProfileTable table = GpuProfileTable::Builtin();
  struct Case {
    Inventory inventory;
    ModelShape model;
    int64_t seq_len, batch;
  };
  const Case cases[] = {
      {Cluster({{"A40", 6, 2}, {"V100", 6, 2}}), testing::W1(), 4096, 24},
      {Cluster({{"A40", 8, 8}, {"V100", 8, 8}}), testing::D1(), 16384, 16},
      {Cluster({{"H100", 4, 4}, {"T4", 8, 8}}), testing::Mixtral8x7B(), 8192, 8},
      {MixedMachines(2, "A100-80GB", "V100", 4), testing::D1(), 32768, 8},
  };
  int checked = 0;
  for (const Case& c : cases) {
    for (bool asym_ea : {true, false}) {
      PlanRequest request = Request(c.inventory, c.model, c.seq_len, c.batch);
      request.asym_ea = asym_ea;
      const PlanningContext ctx(request.model, request.inventory, table, request.seq_len,
                                CommonPrecision({&table.Find(request.inventory.Kinds()[0]),
                                                 &table.Find(request.inventory.Kinds().back())}));
      for (const ShapeCandidate& candidate : EnumerateShapes(ctx, request)) {
        const DataParallelWorld world{candidate.shape.groups * candidate.shape.attention_ranks, candidate.shape.groups};
        try {
          const GroupEvaluation e =
              EvaluateGroup(ctx, candidate.shape, world, Schedule::kZebra, asym_ea, request.max_micro_batches);
          EXPECT_LE(candidate.lower_bound, e.step_seconds * (1 + 1e-9))
              << c.inventory.source << " " << candidate.shape.groups << "x" << candidate.shape.attention_ranks
              << ":" << candidate.shape.expert_ranks << " " << candidate.shape.attention_gpu << "/"
              << candidate.shape.expert_gpu << " asym " << asym_ea;
          ++checked;
        } catch (const Error&) {
          // Does not fit: nothing to bound.
        }
      }
    }
  }
  EXPECT_GT(checked, 500);
}

TEST(Search, PlannerMatchesTheExhaustiveOptimumOverTheGrid) {
  struct Named {
    Inventory inventory;
    const char* name;
  };
  const Named inventories[] = {
      {Cluster({{"A40", 4, 4}, {"V100", 4, 4}}), "node 4 A40 + node 4 V100"},
      {Cluster({{"A40", 6, 6}, {"V100", 6, 6}}), "node 6 A40 + node 6 V100"},
      {Cluster({{"A40", 8, 8}, {"V100", 8, 8}}), "node 8 A40 + node 8 V100"},
      {Cluster({{"A100-80GB", 16, 16}, {"T4", 16, 16}}), "node 16 A100 + node 16 T4"},
      {Cluster({{"A40", 6, 2}, {"V100", 6, 2}}), "6 A40 + 6 V100, 2-GPU nodes"},
      {MixedMachines(2, "A40", "V100", 4), "2 machines of 4 A40 + 4 V100"},
      {Cluster({{"H100", 4, 4}, {"A40", 8, 8}, {"V100", 8, 8}}), "4 H100 + 8 A40 + 8 V100"},
  };
  const ModelShape models[] = {testing::W1(), testing::D1(), testing::Mixtral8x7B()};
  std::printf("\n%-30s %-13s %6s %5s  %-30s %10s %10s %6s %9s\n", "inventory", "model", "seq", "batch",
              "planner's shape", "step (s)", "exhaustive", "diff", "priced");
  int cells = 0, planned = 0, worst_cell = 0;
  double worst = 0;
  for (const Named& inv : inventories) {
    for (const ModelShape& model : models) {
      for (int64_t seq : {4096, 8192, 16384, 32768}) {
        for (int64_t batch : {8, 16, 32, 64}) {
          const PlanRequest request = Request(inv.inventory, model, seq, batch);
          std::string fast_error, truth_error;
          const std::optional<Plan> fast = TryPlan(request, SearchMode::kBranchAndBound, &fast_error);
          const std::optional<Plan> truth = TryPlan(request, SearchMode::kExhaustive, &truth_error);
          ++cells;
          ASSERT_EQ(fast.has_value(), truth.has_value())
              << inv.name << " " << model.source << " " << seq << " " << batch << ": " << fast_error << " | "
              << truth_error;
          if (!fast) {
            std::printf("%-30s %-13s %6lld %5lld  no plan\n", inv.name, model.source.c_str(),
                        static_cast<long long>(seq), static_cast<long long>(batch));
            EXPECT_NE(fast_error.find("no plan: "), std::string::npos) << fast_error;
            continue;
          }
          ++planned;
          const double diff = fast->predicted.step_seconds / truth->predicted.step_seconds - 1;
          if (diff > worst) {
            worst = diff;
            worst_cell = cells;
          }
          std::printf("%-30s %-13s %6lld %5lld  %-30s %10.4f %10.4f %5.2f%% %4d/%-4d\n", inv.name,
                      model.source.c_str(), static_cast<long long>(seq), static_cast<long long>(batch),
                      ShapeText(*fast).c_str(), fast->predicted.step_seconds, truth->predicted.step_seconds,
                      100 * diff, fast->shapes_priced, fast->shapes_enumerated);
          EXPECT_LE(diff, 0.02) << inv.name << " " << model.source << " " << seq << " " << batch;
          EXPECT_GE(diff, -1e-9) << "the exhaustive search is not the optimum";
          EXPECT_EQ(truth->shapes_priced, truth->shapes_enumerated);
        }
      }
    }
  }
  std::printf("%d cells, %d with a plan; largest gap to the exhaustive optimum %.3f%% (cell %d)\n", cells, planned,
              100 * worst, worst_cell);
  EXPECT_GT(planned, cells / 2);
}

TEST(Search, WholeNodesGetExpertParallelGroupsWhereOneToOneCannotFit) {
  // The case: 16K tokens, 16 sequences on one 8-A40 node and one
  // 8-V100 node. 1:1 groups would put all 192 experts on each V100.
  const PlanRequest request = Request(Cluster({{"A40", 8, 8}, {"V100", 8, 8}}), testing::D1(), 16384, 16);
  const Plan plan = MakePlan(request, GpuProfileTable::Builtin());
  const GroupShape& s = plan.classes.front().shape;
  EXPECT_GT(s.expert_ranks, 1) << ShapeText(plan);
  EXPECT_EQ(static_cast<int64_t>(s.groups) * s.attention_ranks * s.sequences_per_attention_rank, 16);
  // The runner-up is recorded, and slower or equal.
  ASSERT_FALSE(plan.alternatives.empty());
  EXPECT_GE(plan.alternatives.front().step_seconds, plan.predicted.step_seconds);
}

TEST(Search, GroupsInsideAMachineArePricedOverItsOwnLinks) {
  // The same GPUs as machines of both kinds, and as one machine per kind:
  // inside a machine the dispatch does not cross the NIC, so the step is
  // shorter, and the plan keeps every group inside one machine.
  const PlanRequest mixed = Request(MixedMachines(2, "A40", "V100", 4), testing::W1(), 4096, 8);
  const PlanRequest apart = Request(Cluster({{"A40", 8, 4}, {"V100", 8, 4}}), testing::W1(), 4096, 8);
  const Plan m = MakePlan(mixed, GpuProfileTable::Builtin());
  const Plan a = MakePlan(apart, GpuProfileTable::Builtin());
  EXPECT_LT(m.predicted.step_seconds, a.predicted.step_seconds) << ShapeText(m) << " vs " << ShapeText(a);
  for (const ZpGroup& g : m.groups) {
    std::set<std::string> machines;
    for (const GpuSlot& slot : g.attention) machines.insert(slot.node.substr(0, 5));
    for (const GpuSlot& slot : g.expert) machines.insert(slot.node.substr(0, 5));
    if (m.classes.front().shape.attention_gpu != m.classes.front().shape.expert_gpu) {
      EXPECT_EQ(machines.size(), 1u) << "a group spans machines";
    }
  }
}

TEST(Search, NothingFitsSaysWhatWould) {
  // 64 sequences of 16K tokens on one 8-A40 node and one 8-V100 node.
  std::string error;
  EXPECT_FALSE(TryPlan(Request(Cluster({{"A40", 8, 8}, {"V100", 8, 8}}), testing::D1(), 16384, 64),
                       SearchMode::kBranchAndBound, &error));
  EXPECT_NE(error.find("does not fit"), std::string::npos) << error;
  EXPECT_NE(error.find("sequences per step fit on this inventory"), std::string::npos) << error;
  EXPECT_NE(error.find("this batch needs"), std::string::npos) << error;

  // The suggested smaller batch does plan.
  const size_t at = error.find("at most ");
  ASSERT_NE(at, std::string::npos) << error;
  const int64_t most = std::stoll(error.substr(at + 8));
  EXPECT_TRUE(TryPlan(Request(Cluster({{"A40", 8, 8}, {"V100", 8, 8}}), testing::D1(), 16384, most),
                      SearchMode::kBranchAndBound))
      << most;
}

}  // namespace
}  // namespace hetermoe::planner
