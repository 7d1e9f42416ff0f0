// The desired children policy: the plan's slots, what is created for the
// empty ones, and when Created turns True.
#include "operator/core/policies/desired_children_policy.h"

#include <gtest/gtest.h>

#include "operator/core/policies/plan_policy.h"
#include "tests/operator/policies/policy_fixtures.h"

namespace hetermoe::op {
namespace {

using namespace fixtures;

TEST(DesiredChildrenPolicy, PlanSlots) {
  JobObservation o = TinyObservation();
  const PlacementDecision plan = MakePlan(o.job.spec, *o.model_config, o.nodes, TierPolicy());
  const std::vector<ObservedPod> pods = {Pod(Role::kExpert, 3, "Running"), Pod(Role::kAttention, 1, "Pending"),
                                         Pod(Role::kExpert, 7, "Running")};  // beyond the plan: no slot
  const std::vector<PlanSlot> slots = PlanSlots(plan, Pointers(pods));
  struct Want {
    Role role;
    int64_t index;
    const ObservedPod* pod;
  };
  const std::vector<Want> want = {{Role::kAttention, 0, nullptr}, {Role::kAttention, 1, &pods[1]},
                                  {Role::kExpert, 0, nullptr},    {Role::kExpert, 1, nullptr},
                                  {Role::kExpert, 2, nullptr},    {Role::kExpert, 3, &pods[0]}};
  ASSERT_EQ(slots.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(slots[i].role, want[i].role);
    EXPECT_EQ(slots[i].index, want[i].index);
    EXPECT_EQ(slots[i].pod, want[i].pod);
  }
}

TEST(DesiredChildrenPolicy, Decides) {
  struct Case {
    std::string name;
    size_t existing_pods;  // the first N of AllPods
    bool service, was_created, volcano;
    size_t created_pods;
    bool applies_service, became_created;
    std::string created;
    bool start_time;
  };
  const std::vector<Case> cases = {
      {"nothing yet", 0, false, false, false, 6, true, false, "", true},
      {"some pods", 4, true, false, false, 2, false, false, "", true},
      {"every pod seen", 6, true, false, false, 0, false, true, "True/PodsCreated", false},
      {"already created", 6, true, true, false, 0, false, false, "True/PodsCreated", false},
      {"volcano", 6, true, true, true, 0, false, false, "True/PodsCreated", false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    JobObservation o = TinyObservation();
    if (c.volcano) {
      o.job.spec.run_policy.scheduling_policy.emplace();
      o.job.spec.run_policy.scheduling_policy->scheduler = "volcano";
    }
    o.service_exists = c.service;
    o.pods = AllPods("Pending");
    o.pods.resize(c.existing_pods);
    if (c.was_created) SetCondition(o.job.status, kCondCreated, true, "PodsCreated", "", FormatTime(kT0 - 60));
    const PlacementDecision plan = MakePlan(o.job.spec, *o.model_config, o.nodes, TierPolicy());
    JobDecision d = StartDecision(o);
    DesiredChildrenPolicy(o, plan, PlanSlots(plan, Pointers(o.pods)), d);
    EXPECT_EQ(d.create_pods.size(), c.created_pods);
    EXPECT_EQ(d.apply_service.has_value(), c.applies_service);
    EXPECT_EQ(d.apply_pod_group.has_value(), c.volcano);
    EXPECT_EQ(d.became_created, c.became_created);
    EXPECT_EQ(ConditionOf(d.status, kCondCreated), c.created);
    EXPECT_EQ(d.status.start_time.has_value(), c.start_time);
    for (const auto& pod : d.create_pods) EXPECT_EQ(pod["metadata"]["labels"][kLabelAttempt], "0");
  }
}

TEST(DesiredChildrenPolicy, StartTimeIsKeptAcrossAttempts) {
  JobObservation o = TinyObservation();
  o.job.status.restarts = 1;
  o.job.status.start_time = FormatTime(kT0 - 600);
  const PlacementDecision plan = MakePlan(o.job.spec, *o.model_config, o.nodes, TierPolicy());
  JobDecision d = StartDecision(o);
  DesiredChildrenPolicy(o, plan, PlanSlots(plan, {}), d);
  ASSERT_EQ(d.create_pods.size(), 6u);
  EXPECT_EQ(d.create_pods[0]["metadata"]["labels"][kLabelAttempt], "1");
  EXPECT_EQ(d.status.start_time, FormatTime(kT0 - 600));
}

}  // namespace
}  // namespace hetermoe::op
