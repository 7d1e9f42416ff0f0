// The finished policy: clean-up per cleanPodPolicy, the TTL, and FinishJob.
#include "operator/core/policies/finished_policy.h"

#include <gtest/gtest.h>

#include "tests/operator/policies/policy_fixtures.h"

namespace hetermoe::op {
namespace {

using namespace fixtures;

TEST(FinishedPolicy, CleanPodPolicyPicksThePods) {
  const std::vector<ObservedPod> pods = {
      Pod(Role::kAttention, 0, "Running"), Pod(Role::kAttention, 1, "Pending"), Pod(Role::kExpert, 0, "Succeeded"),
      Pod(Role::kExpert, 1, "Failed"),     Pod(Role::kExpert, 2, "Running", 0, /*deleting=*/true),
      Pod(Role::kExpert, 3, "")};
  struct Case {
    std::string policy;
    std::vector<std::string> deleted;
  };
  const std::vector<Case> cases = {
      {"All", {"tiny-attention-0", "tiny-attention-1", "tiny-expert-0", "tiny-expert-1", "tiny-expert-3"}},
      {"Running", {"tiny-attention-0", "tiny-attention-1", "tiny-expert-3"}},
      {"None", {}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.policy);
    EXPECT_EQ(PodsToCleanUp(pods, c.policy), c.deleted);
  }
}

TEST(FinishedPolicy, TtlAfterFinished) {
  struct Case {
    std::string name;
    std::optional<int64_t> ttl;
    bool completion_time;  // else the TTL counts from now
    int64_t elapsed;
    bool delete_job;
    std::optional<int64_t> requeue;
  };
  const std::vector<Case> cases = {
      {"no TTL", std::nullopt, true, 1000, false, std::nullopt},
      {"due later", 100, true, 40, false, 60},
      {"due now", 100, true, 100, true, std::nullopt},
      {"overdue", 100, true, 500, true, std::nullopt},
      {"no completion time", 100, false, 40, false, 100},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    JobObservation o = TinyObservation();
    o.job.spec.run_policy.ttl_seconds_after_finished = c.ttl;
    SetCondition(o.job.status, kCondSucceeded, true, "AllPodsSucceeded", "", FormatTime(kT0));
    if (c.completion_time) o.job.status.completion_time = FormatTime(kT0);
    o.now = kT0 + c.elapsed;
    JobDecision d = StartDecision(o);
    EXPECT_EQ(FinishedPolicy(o, d), Flow::kStop);
    EXPECT_EQ(d.delete_job, c.delete_job);
    EXPECT_EQ(d.requeue_after_seconds, c.requeue);
  }
}

TEST(FinishedPolicy, UnfinishedJobGoesOn) {
  JobObservation o = TinyObservation();
  o.pods = AllPods("Running");
  JobDecision d = StartDecision(o);
  EXPECT_EQ(FinishedPolicy(o, d), Flow::kContinue);
  EXPECT_TRUE(d.delete_pods.empty());
  EXPECT_FALSE(d.delete_job || d.requeue_after_seconds);
}

TEST(FinishedPolicy, FinishJob) {
  struct Case {
    bool succeeded;
    const char* terminal;
    std::string running_after;
    bool completion_time_before;
  };
  const std::vector<Case> cases = {
      {true, kCondSucceeded, "False/JobSucceeded", false},
      {false, kCondFailed, "False/JobFailed", false},
      {false, kCondFailed, "False/JobFailed", true},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.terminal);
    JobObservation o = TinyObservation();
    o.job.spec.run_policy.ttl_seconds_after_finished = 100;
    o.pods = AllPods("Running");
    SetCondition(o.job.status, kCondRunning, true, "AllPodsRunning", "", FormatTime(kT0 - 60));
    if (c.completion_time_before) o.job.status.completion_time = FormatTime(kT0 - 10);
    JobDecision d = StartDecision(o);
    FinishJob(o, c.succeeded, "Why", "what happened", d);
    EXPECT_EQ(ConditionOf(d.status, c.terminal), "True/Why");
    EXPECT_EQ(FindCondition(d.status, c.terminal)->message, "what happened");
    EXPECT_EQ(ConditionOf(d.status, kCondRunning), c.running_after);
    EXPECT_EQ(ConditionOf(d.status, kCondRestarting), "") << "a False condition is not added before it matters";
    EXPECT_EQ(d.status.completion_time, FormatTime(c.completion_time_before ? kT0 - 10 : kT0));
    EXPECT_EQ(d.became_succeeded, c.succeeded);
    EXPECT_EQ(d.became_failed, !c.succeeded);
    EXPECT_EQ(d.delete_pods.size(), 6u) << "cleanPodPolicy Running";
    EXPECT_EQ(d.requeue_after_seconds, 100);
  }
}

}  // namespace
}  // namespace hetermoe::op
