// The validation policy: invalid specs fail at once, an unreadable model
// config waits, and a spec that cannot be read fails once.
#include "operator/core/policies/validation_policy.h"

#include <functional>

#include <gtest/gtest.h>

#include "operator/core/events.h"
#include "tests/operator/policies/policy_fixtures.h"

namespace hetermoe::op {
namespace {

using namespace fixtures;

TEST(ValidationPolicy, Decides) {
  struct Case {
    std::string name;
    std::function<void(JobObservation&)> change;
    Flow flow;
    std::string failed, created, message_has;
    std::optional<int64_t> requeue;
  };
  const auto no_model = [](JobObservation& o) {
    o.model_config.reset();
    o.model_config_problem = "ConfigMap m not found";
  };
  const std::vector<Case> cases = {
      {"valid", [](JobObservation&) {}, Flow::kContinue, "", "", "", std::nullopt},
      {"invalid", [](JobObservation& o) { o.job.spec.training.micro_batches = 3; }, Flow::kStop, "True/InvalidSpec",
       "", "microBatches", std::nullopt},
      {"model config unavailable", no_model, Flow::kStop, "", "False/ModelConfigUnavailable",
       "ConfigMap m not found", 10},
      {"invalid without model config",
       [&](JobObservation& o) {
         no_model(o);
         o.job.spec.training.micro_batches = 3;
       },
       Flow::kStop, "True/InvalidSpec", "", "microBatches", std::nullopt},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    JobObservation o = TinyObservation();
    c.change(o);
    JobDecision d = StartDecision(o);
    EXPECT_EQ(ValidationPolicy(o, d), c.flow);
    EXPECT_EQ(ConditionOf(d.status, kCondFailed), c.failed);
    EXPECT_EQ(ConditionOf(d.status, kCondCreated), c.created);
    EXPECT_EQ(d.became_failed, !c.failed.empty());
    EXPECT_EQ(d.requeue_after_seconds, c.requeue);
    if (!c.message_has.empty()) {
      const Condition* cond = FindCondition(d.status, c.failed.empty() ? kCondCreated : kCondFailed);
      EXPECT_NE(cond->message.find(c.message_has), std::string::npos) << cond->message;
    }
    EXPECT_TRUE(d.create_pods.empty() && !d.apply_service && !d.apply_config_map);
  }
}

TEST(ValidationPolicy, UnreadableSpecFailsOnce) {
  struct Case {
    std::string name;
    nlohmann::json old_status;
    bool writes;
  };
  const std::vector<Case> cases = {
      {"no status yet", nlohmann::json::object(), true},
      {"running", {{"state", "Running"}, {"restarts", 1}}, true},
      {"already failed", {{"state", "Failed"}}, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::optional<JobStatus> s = StatusForUnreadableSpec(c.old_status, "spec.training.steps: not a number", kT0);
    ASSERT_EQ(s.has_value(), c.writes);
    if (!s) continue;
    EXPECT_EQ(s->state, "Failed");
    EXPECT_EQ(ConditionOf(*s, kCondFailed), "True/InvalidSpec");
    EXPECT_EQ(FindCondition(*s, kCondFailed)->message, "spec.training.steps: not a number");
    EXPECT_EQ(FindCondition(*s, kCondFailed)->last_transition_time, FormatTime(kT0));
    EXPECT_EQ(s->completion_time, FormatTime(kT0));
    EXPECT_EQ(s->conditions.size(), 1u);
    EXPECT_EQ(s->restarts, 0) << "a fresh status: the old one cannot be trusted";
    EXPECT_EQ(JobEvents(JobStatus{}, *s, 0),
              (std::vector<JobEvent>{{"Warning", "InvalidSpec", "spec.training.steps: not a number"}}))
        << "the one Event the controller posts for it";
  }
}

}  // namespace
}  // namespace hetermoe::op
