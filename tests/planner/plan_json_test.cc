// The plan file's contract: the fields the trainer and the operator read.
#include "planner/plan_json.h"

#include <gtest/gtest.h>

#include "planner/plan_table.h"
#include "planner/planner.h"
#include "tests/planner/test_clusters.h"
#include "tests/planner/test_models.h"

namespace hetermoe::planner {
namespace {

Plan PaperPlan() {
  PlanRequest r;
  r.inventory = testing::Cluster({{"A40", 6, 2}, {"V100", 6, 2}});
  r.model = testing::W1();
  r.seq_len = 8192;
  r.global_batch = 24;
  return MakePlan(r, GpuProfileTable::Builtin());
}

TEST(PlanJson, HasTheFieldsTheIssueAsksFor) {
  const Plan plan = PaperPlan();
  const nlohmann::json j = PlanToJson(plan);
  ASSERT_TRUE(j["groups"].is_array());
  ASSERT_FALSE(j["groups"].empty());
  for (const auto& g : j["groups"]) {
    for (const char* role : {"attention", "expert"}) {
      ASSERT_TRUE(g[role].is_array()) << role;
      for (const auto& slot : g[role]) {
        EXPECT_TRUE(slot["node"].is_string());
        EXPECT_TRUE(slot["gpu_index"].is_number_integer());
      }
    }
  }
  EXPECT_TRUE(j["micro_batches"].is_number_integer());
  ASSERT_TRUE(j["asym_ea"].is_array());
  EXPECT_EQ(j["asym_ea"].size(), 4u);  // one entry per layer
  EXPECT_GT(j["predicted"]["step_seconds"].get<double>(), 0);
  EXPECT_GT(j["predicted"]["tokens_per_second"].get<double>(), 0);
  EXPECT_TRUE(j["predicted"]["utilisation"].contains("A40"));
  EXPECT_TRUE(j["predicted"]["utilisation"].contains("V100"));
  for (const char* b : {"ep", "distep", "ep_ideal", "pp"}) {
    EXPECT_TRUE(j["baselines"][b]["tokens_per_second"].is_number()) << b;
  }
  EXPECT_EQ(j["precision"]["A40"], "fp16");
  EXPECT_EQ(j["format"], "hetermoe-plan/1");
  const auto& c = j["group_classes"][0];
  EXPECT_EQ(c["placement"].size(), 4u);
  EXPECT_EQ(c["placement"][0]["expert_ranks"].size(), c["expert_ranks"].get<size_t>());
  EXPECT_FALSE(j.contains("timeline"));
}

TEST(PlanJson, TimelineOnRequest) {
  const nlohmann::json j = PlanToJson(PaperPlan(), true);
  ASSERT_TRUE(j["timeline"].is_array());
  bool attention = false;
  for (const auto& r : j["timeline"]) {
    if (r["resource"] == "attention") {
      attention = true;
      EXPECT_FALSE(r["intervals"].empty());
      EXPECT_EQ(r["intervals"][0]["op"], "attention_forward");
    }
  }
  EXPECT_TRUE(attention);
}

TEST(PlanTable, NamesTheShapeThePredictionAndTheBaselines) {
  const std::string text = PlanTable(PaperPlan());
  for (const char* piece : {"attention ranks: A40", "expert ranks: V100", "group class 0", "tokens/s", "EP-Ideal",
                            "DistEP", "PP"}) {
    EXPECT_NE(text.find(piece), std::string::npos) << piece << "\n" << text;
  }
}

}  // namespace
}  // namespace hetermoe::planner
