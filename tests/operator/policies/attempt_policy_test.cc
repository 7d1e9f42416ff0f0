// The attempt policy: older attempts are deleted and waited out, a newer one
// means the cache lags, the current attempt's pods are handed on in order.
#include "operator/core/policies/attempt_policy.h"

#include <gtest/gtest.h>

#include "tests/operator/policies/policy_fixtures.h"

namespace hetermoe::op {
namespace {

using namespace fixtures;

TEST(AttemptPolicy, Decides) {
  struct Case {
    std::string name;
    std::vector<ObservedPod> pods;  // the job's status is at attempt 1
    bool stop;
    std::vector<std::string> deleted;
    std::optional<int64_t> requeue;
    std::vector<std::string> current;
  };
  const std::vector<Case> cases = {
      {"no pods yet", {}, false, {}, std::nullopt, {}},
      {"current attempt, handed on in rank order",
       {Pod(Role::kExpert, 1, "Running", 1), Pod(Role::kAttention, 1, "Running", 1),
        Pod(Role::kExpert, 0, "Running", 1), Pod(Role::kAttention, 0, "Running", 1)},
       false, {}, std::nullopt,
       {"tiny-attention-0", "tiny-attention-1", "tiny-expert-0", "tiny-expert-1"}},
      {"older pods are deleted",
       {Pod(Role::kAttention, 0, "Running", 0), Pod(Role::kExpert, 0, "Failed", 0)},
       true, {"tiny-attention-0", "tiny-expert-0"}, std::nullopt, {}},
      {"older pods being deleted are waited for",
       {Pod(Role::kAttention, 0, "Running", 0, /*deleting=*/true), Pod(Role::kExpert, 0, "Pending", 1)},
       true, {}, std::nullopt, {}},
      {"a newer attempt: the cache lags", {Pod(Role::kAttention, 0, "Pending", 2)}, true, {}, 1, {}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    JobObservation o = TinyObservation();
    o.job.status.restarts = 1;
    o.pods = c.pods;
    JobDecision d = StartDecision(o);
    std::optional<std::vector<const ObservedPod*>> current = AttemptPolicy(o, d);
    EXPECT_EQ(!current, c.stop);
    EXPECT_EQ(d.delete_pods, c.deleted);
    EXPECT_EQ(d.requeue_after_seconds, c.requeue);
    std::vector<std::string> names;
    if (current)
      for (const ObservedPod* p : *current) names.push_back(p->name);
    EXPECT_EQ(names, c.current);
  }
}

}  // namespace
}  // namespace hetermoe::op
