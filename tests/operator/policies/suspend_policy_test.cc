// The suspend policy: suspend deletes the pods and stops; resume goes on.
#include "operator/core/policies/suspend_policy.h"

#include <gtest/gtest.h>

#include "tests/operator/policies/policy_fixtures.h"

namespace hetermoe::op {
namespace {

using namespace fixtures;

TEST(SuspendPolicy, Decides) {
  struct Case {
    std::string name;
    bool suspend, was_suspended;
    Flow flow;
    std::string suspended, running;
    size_t deleted;
    bool start_time;
  };
  const std::vector<Case> cases = {
      {"running job", false, false, Flow::kContinue, "", "True/AllPodsRunning", 0, true},
      {"suspend", true, false, Flow::kStop, "True/Suspended", "False/Suspended", 5, false},
      {"still suspended", true, true, Flow::kStop, "True/Suspended", "False/Suspended", 5, false},
      {"resume", false, true, Flow::kContinue, "False/Resumed", "True/AllPodsRunning", 0, true},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    JobObservation o = TinyObservation();
    o.job.spec.run_policy.suspend = c.suspend;
    o.pods = AllPods("Running");
    o.pods[2].deleting = true;  // deleted already: not asked again
    o.job.status.start_time = FormatTime(kT0 - 60);
    SetCondition(o.job.status, kCondRunning, true, "AllPodsRunning", "", FormatTime(kT0 - 60));
    if (c.was_suspended) SetCondition(o.job.status, kCondSuspended, true, "Suspended", "", FormatTime(kT0 - 60));
    JobDecision d = StartDecision(o);
    EXPECT_EQ(SuspendPolicy(o, d), c.flow);
    EXPECT_EQ(ConditionOf(d.status, kCondSuspended), c.suspended);
    EXPECT_EQ(ConditionOf(d.status, kCondRunning), c.running);
    EXPECT_EQ(d.delete_pods.size(), c.deleted);
    EXPECT_EQ(d.status.start_time.has_value(), c.start_time) << "the deadline counts from the resume";
    EXPECT_EQ(d.status.restarts, 0) << "suspend is not a restart";
  }
}

}  // namespace
}  // namespace hetermoe::op
