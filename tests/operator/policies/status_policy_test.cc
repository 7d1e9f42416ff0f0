// Status from the pods: replica counts and the conditions the pods imply.
#include "operator/core/policies/status_policy.h"

#include <gtest/gtest.h>

#include "operator/core/policies/plan_policy.h"
#include "tests/operator/policies/policy_fixtures.h"

namespace hetermoe::op {
namespace {

using namespace fixtures;

TEST(StatusPolicy, CountReplicas) {
  const std::vector<ObservedPod> pods = {
      Pod(Role::kAttention, 0, "Running", 1), Pod(Role::kAttention, 1, "", 1),
      Pod(Role::kExpert, 0, "Succeeded", 1),  Pod(Role::kExpert, 1, "Failed", 1),
      Pod(Role::kExpert, 2, "Running", 1, true), Pod(Role::kExpert, 3, "Unknown", 1),
      Pod(Role::kExpert, 0, "Running", 0)};  // an older attempt: not counted
  JobStatus s;
  s.attention.failed = 9;  // recounted from scratch
  CountReplicas(pods, 1, s);
  EXPECT_EQ(s.attention, (ReplicaStatus{2, 0, 0}));
  EXPECT_EQ(s.expert, (ReplicaStatus{0, 1, 1}));
}

TEST(StatusPolicy, ConditionsFromPods) {
  struct Case {
    std::string name;
    std::vector<std::string> phases;  // AllPods order; "deleting" = Running, being deleted
    bool was_running;
    std::string running, succeeded, restarting;
    std::string running_message;
  };
  const std::vector<std::string> all_running(6, "Running");
  const std::vector<Case> cases = {
      {"all pending", std::vector<std::string>(6, "Pending"), false, "", "", "True/PodFailed", ""},
      {"all running", all_running, false, "True/AllPodsRunning", "", "False/Running", "6 pods running"},
      {"running or done", {"Running", "Succeeded", "Running", "Succeeded", "Running", "Running"}, false,
       "True/AllPodsRunning", "", "False/Running", "4 pods running"},
      {"one still pending", {"Running", "Running", "Running", "Running", "Running", "Pending"}, true,
       "False/PodsNotRunning", "", "True/PodFailed", "5 of 6 pods running"},
      {"one being deleted", {"Running", "Running", "Running", "deleting", "Running", "Running"}, true,
       "False/PodsNotRunning", "", "True/PodFailed", "5 of 6 pods running"},
      {"all succeeded", std::vector<std::string>(6, "Succeeded"), true, "False/JobSucceeded",
       "True/AllPodsSucceeded", "False/JobSucceeded", ""},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    JobObservation o = TinyObservation();
    o.pods = AllPods("Running");
    for (size_t i = 0; i < o.pods.size(); ++i) {
      o.pods[i].deleting = c.phases[i] == "deleting";
      o.pods[i].phase = o.pods[i].deleting ? "Running" : c.phases[i];
    }
    SetCondition(o.job.status, kCondRestarting, true, "PodFailed", "", FormatTime(kT0 - 60));
    if (c.was_running) SetCondition(o.job.status, kCondRunning, true, "AllPodsRunning", "", FormatTime(kT0 - 60));
    const PlacementDecision plan = MakePlan(o.job.spec, *o.model_config, o.nodes, TierPolicy());
    const std::vector<const ObservedPod*> current = Pointers(o.pods);
    JobDecision d = StartDecision(o);
    StatusFromPodsPolicy(o, PlanSlots(plan, current), current, d);
    EXPECT_EQ(ConditionOf(d.status, kCondRunning), c.running);
    EXPECT_EQ(ConditionOf(d.status, kCondSucceeded), c.succeeded);
    EXPECT_EQ(ConditionOf(d.status, kCondRestarting), c.restarting);
    EXPECT_EQ(d.became_succeeded, !c.succeeded.empty());
    if (!c.running_message.empty()) {
      EXPECT_EQ(FindCondition(d.status, kCondRunning)->message, c.running_message);
    }
  }
}

TEST(StatusPolicy, SuccessKeepsRankZerosFinalProgress) {
  JobObservation o = TinyObservation();
  o.pods = AllPods("Succeeded");
  o.pods[0].message = R"({"step": 100, "loss": 2.5, "tokens_per_second": 4096})";
  o.pods[1].message = R"({"step": 7, "loss": 9.0, "tokens_per_second": 1})";  // not rank 0
  const PlacementDecision plan = MakePlan(o.job.spec, *o.model_config, o.nodes, TierPolicy());
  const std::vector<const ObservedPod*> current = Pointers(o.pods);
  JobDecision d = StartDecision(o);
  StatusFromPodsPolicy(o, PlanSlots(plan, current), current, d);
  ASSERT_TRUE(d.status.progress);
  EXPECT_EQ(d.status.progress->step, 100);
  EXPECT_DOUBLE_EQ(*d.status.progress->loss, 2.5);
  EXPECT_EQ(FindCondition(d.status, kCondSucceeded)->message, "all 6 pods succeeded");
  EXPECT_EQ(d.status.completion_time, FormatTime(kT0));
}

}  // namespace
}  // namespace hetermoe::op
