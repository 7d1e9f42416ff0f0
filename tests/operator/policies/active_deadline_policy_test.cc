// The active deadline policy: fail when due, come back when it will be.
#include "operator/core/policies/active_deadline_policy.h"

#include <gtest/gtest.h>

#include "tests/operator/policies/policy_fixtures.h"

namespace hetermoe::op {
namespace {

using namespace fixtures;

TEST(ActiveDeadlinePolicy, Decides) {
  struct Case {
    std::string name;
    std::optional<int64_t> deadline;
    std::optional<int64_t> started;  // seconds before now
    Flow flow;
    std::optional<int64_t> requeue;
    std::string failed;
  };
  const std::vector<Case> cases = {
      {"no deadline", std::nullopt, 1000, Flow::kContinue, std::nullopt, ""},
      {"not started", 60, std::nullopt, Flow::kContinue, std::nullopt, ""},
      {"due later", 60, 20, Flow::kContinue, 40, ""},
      {"due now", 60, 60, Flow::kStop, std::nullopt, "True/DeadlineExceeded"},
      {"overdue", 60, 500, Flow::kStop, std::nullopt, "True/DeadlineExceeded"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    JobObservation o = TinyObservation();
    o.job.spec.run_policy.active_deadline_seconds = c.deadline;
    if (c.started) o.job.status.start_time = FormatTime(kT0 - *c.started);
    o.pods = AllPods("Running");
    JobDecision d = StartDecision(o);
    EXPECT_EQ(ActiveDeadlinePolicy(o, d), c.flow);
    EXPECT_EQ(d.requeue_after_seconds, c.requeue);
    EXPECT_EQ(ConditionOf(d.status, kCondFailed), c.failed);
    EXPECT_EQ(d.delete_pods.size(), c.failed.empty() ? 0u : 6u) << "a failed job's running pods go";
  }
}

}  // namespace
}  // namespace hetermoe::op
