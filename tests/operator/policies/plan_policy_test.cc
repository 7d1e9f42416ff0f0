// The plan policy: the ConfigMap's plan for the current attempt is kept,
// otherwise one is made; a job that cannot be placed waits.
#include "operator/core/policies/plan_policy.h"

#include <gtest/gtest.h>

#include "tests/operator/policies/policy_fixtures.h"

namespace hetermoe::op {
namespace {

using namespace fixtures;
using nlohmann::json;

json PlanConfigMap(const JobObservation& o, int64_t attempt) {
  PlacementDecision plan = MakePlan(o.job.spec, *o.model_config, o.nodes, TierPolicy());
  plan.summary = "kept for attempt " + std::to_string(attempt);
  return BuildPlanConfigMap(o.job, plan, *o.model_config, attempt);
}

TEST(PlanPolicy, PlanIsCurrentReadsTheAttemptLabel) {
  struct Case {
    std::string name;
    json labels;
    bool current;
  };
  const std::vector<Case> cases = {
      {"this attempt", {{kLabelAttempt, "2"}}, true},
      {"another attempt", {{kLabelAttempt, "1"}}, false},
      {"no attempt label", json::object(), false},
      {"not a number", {{kLabelAttempt, "two"}}, false},
      {"trailing junk", {{kLabelAttempt, "2x"}}, false},
      {"not a string", {{kLabelAttempt, 2}}, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    EXPECT_EQ(PlanIsCurrent({{"metadata", {{"labels", c.labels}}}}, 2), c.current);
  }
  EXPECT_FALSE(PlanIsCurrent({{"metadata", json::object()}}, 0)) << "no labels";
}

TEST(PlanPolicy, KeptPlan) {
  const JobObservation o = TinyObservation();
  struct Case {
    std::string name;
    std::optional<json> config_map;
    bool kept;
  };
  json no_plan = PlanConfigMap(o, 0), corrupt = PlanConfigMap(o, 0);
  no_plan["data"].erase("plan.json");
  corrupt["data"]["plan.json"] = "{not json";
  const std::vector<Case> cases = {
      {"no ConfigMap", std::nullopt, false},
      {"this attempt's", PlanConfigMap(o, 0), true},
      {"an older attempt's", PlanConfigMap(o, 1), false},
      {"no plan.json", no_plan, false},
      {"unreadable plan.json", corrupt, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::optional<PlacementDecision> plan = KeptPlan(c.config_map, 0);
    ASSERT_EQ(plan.has_value(), c.kept);
    if (plan) {
      EXPECT_EQ(plan->summary, "kept for attempt 0");
    }
  }
}

TEST(PlanPolicy, Decides) {
  struct Case {
    std::string name;
    std::optional<int64_t> config_map_attempt;
    bool nodes;
    bool stop, applies_config_map;
    std::string created;
    std::optional<int64_t> requeue;
  };
  const std::vector<Case> cases = {
      {"first plan", std::nullopt, true, false, true, "", std::nullopt},
      {"kept plan", 1, false, false, false, "", std::nullopt},
      {"new attempt, new plan", 0, true, false, true, "", std::nullopt},
      {"no GPUs", std::nullopt, false, true, false, "False/Unschedulable", 30},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    JobObservation o = TinyObservation();
    o.job.status.restarts = 1;
    if (c.config_map_attempt) o.plan_config_map = PlanConfigMap(o, *c.config_map_attempt);
    if (!c.nodes) o.nodes.clear();
    JobDecision d = StartDecision(o);
    std::optional<PlacementDecision> plan = PlanPolicy(o, TierPolicy(), d);
    EXPECT_EQ(!plan, c.stop);
    EXPECT_EQ(d.apply_config_map.has_value(), c.applies_config_map);
    if (d.apply_config_map) {
      EXPECT_TRUE(PlanIsCurrent(*d.apply_config_map, 1)) << "made for this attempt";
    }
    EXPECT_EQ(ConditionOf(d.status, kCondCreated), c.created);
    EXPECT_EQ(d.requeue_after_seconds, c.requeue);
    if (!plan) {
      EXPECT_FALSE(d.status.plan);
      continue;
    }
    ASSERT_TRUE(d.status.plan);
    EXPECT_EQ(*d.status.plan, SummarisePlan(o.job, *plan));
    EXPECT_EQ(d.status.plan->world_size, 6);
    EXPECT_EQ(d.status.plan->config_map, "tiny-plan");
    EXPECT_EQ(d.status.plan->summary == "kept for attempt 1", c.config_map_attempt == 1);
  }
}

}  // namespace
}  // namespace hetermoe::op
