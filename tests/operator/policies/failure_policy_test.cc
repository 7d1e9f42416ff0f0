// The failure policy: the restart policies' table, the verdict, and what a
// lost pod does to the job.
#include "operator/core/policies/failure_policy.h"

#include <gtest/gtest.h>

#include "tests/operator/policies/policy_fixtures.h"

namespace hetermoe::op {
namespace {

using namespace fixtures;

TEST(FailurePolicy, RestartPolicyByExitCode) {
  struct Case {
    std::string policy;
    std::optional<int> exit_code;  // none: evicted, deleted, node lost
    bool retryable;
  };
  const std::vector<Case> cases = {
      {"Never", std::nullopt, false}, {"Never", 137, false},     {"Never", 175, false},
      {"Always", 1, true},            {"Always", 2, true},       {"Always", std::nullopt, true},
      {"OnFailure", 1, false},        {"OnFailure", 2, false},   {"OnFailure", 3, true},
      {"OnFailure", 143, true},       {"OnFailure", 175, true},  {"OnFailure", std::nullopt, true},
      {"ExitCode", 1, false},         {"ExitCode", 127, false},  {"ExitCode", 128, true},
      {"ExitCode", 137, true},        {"ExitCode", 175, true},   {"ExitCode", 255, true},
      {"ExitCode", 0, true},          {"ExitCode", std::nullopt, true},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.policy + " " + (c.exit_code ? std::to_string(*c.exit_code) : "none"));
    ObservedPod p = Pod(Role::kExpert, 0, "Failed");
    p.exit_code = c.exit_code;
    EXPECT_EQ(IsRetryableFailure(c.policy, p), c.retryable);
  }
}

TEST(FailurePolicy, Verdict) {
  struct Case {
    std::string name;
    int exit_code;
    int64_t restarts, backoff_limit;
    FailureVerdict verdict;
  };
  const std::vector<Case> cases = {
      {"retryable, restarts left", 137, 0, 2, FailureVerdict::kRestart},
      {"retryable, last restart", 137, 1, 2, FailureVerdict::kRestart},
      {"retryable, no restarts left", 137, 2, 2, FailureVerdict::kBackoffLimitExceeded},
      {"backoffLimit 0", 137, 0, 0, FailureVerdict::kBackoffLimitExceeded},
      {"permanent, restarts left", 1, 0, 2, FailureVerdict::kPermanent},
      {"permanent, no restarts left", 1, 2, 2, FailureVerdict::kPermanent},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    ObservedPod p = Pod(Role::kExpert, 0, "Failed");
    p.exit_code = c.exit_code;
    EXPECT_EQ(JudgeFailure("OnFailure", p, c.restarts, c.backoff_limit), c.verdict);
  }
}

TEST(FailurePolicy, LostPodsAndTheirDescription) {
  struct Case {
    std::string name;
    ObservedPod pod;
    bool lost;
    std::string description;
  };
  auto with = [](ObservedPod p, std::optional<int> code, std::string reason, std::string message) {
    p.exit_code = code;
    p.reason = std::move(reason);
    p.message = std::move(message);
    return p;
  };
  const std::vector<Case> cases = {
      {"running", Pod(Role::kExpert, 1, "Running"), false, ""},
      {"succeeded", Pod(Role::kExpert, 1, "Succeeded"), false, ""},
      {"succeeded, deleting", Pod(Role::kExpert, 1, "Succeeded", 0, true), false, ""},
      {"failed", with(Pod(Role::kExpert, 1, "Failed"), 1, "", "hetermoe-trainer: error: bad data"), true,
       "pod tiny-expert-1 failed with exit code 1: hetermoe-trainer: error: bad data"},
      {"evicted", with(Pod(Role::kExpert, 1, "Failed"), std::nullopt, "Evicted", ""), true,
       "pod tiny-expert-1 failed (Evicted)"},
      {"deleted", Pod(Role::kExpert, 1, "Running", 0, true), true, "pod tiny-expert-1 was deleted"},
      {"deleted, with reason", with(Pod(Role::kExpert, 1, "Pending", 0, true), std::nullopt, "NodeLost", ""), true,
       "pod tiny-expert-1 was deleted (NodeLost)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    EXPECT_EQ(IsLost(c.pod), c.lost);
    if (c.lost) {
      EXPECT_EQ(DescribeFailure(c.pod), c.description);
    }
  }
}

TEST(FailurePolicy, Decides) {
  struct Case {
    std::string name;
    std::string expert_policy;
    std::vector<std::pair<size_t, int>> failed;  // pod (AllPods order), exit code
    int64_t restarts;
    Flow flow;
    std::string failed_condition, restarting;
    size_t deleted;  // a restart: every pod of the attempt; a failure: cleanPodPolicy Running
    std::string message_has;
  };
  const std::vector<Case> cases = {
      {"all running", "OnFailure", {}, 0, Flow::kContinue, "", "", 0, ""},
      {"retryable: the whole attempt restarts", "OnFailure", {{3, 137}}, 0, Flow::kStop, "", "True/PodFailed", 6,
       "pod tiny-expert-1 failed with exit code 137; restarting from the last checkpoint (restart 1 of 2)"},
      {"permanent", "OnFailure", {{3, 1}}, 0, Flow::kStop, "True/PodFailed", "", 5,
       "pod tiny-expert-1 failed with exit code 1 (restartPolicy OnFailure)"},
      {"no restarts left", "OnFailure", {{3, 137}}, 2, Flow::kStop, "True/BackoffLimitExceeded", "", 5,
       "pod tiny-expert-1 failed with exit code 137; 2 restart(s) reached runPolicy.backoffLimit"},
      {"the role's policy", "Never", {{3, 137}}, 0, Flow::kStop, "True/PodFailed", "", 5, "(restartPolicy Never)"},
      // The first lost pod in rank order decides, even when a later one failed for good.
      {"first lost pod decides", "Never", {{0, 137}, {3, 1}}, 0, Flow::kStop, "", "True/PodFailed", 6,
       "pod tiny-attention-0 failed"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    JobObservation o = TinyObservation();
    o.job.spec.expert.restart_policy = c.expert_policy;
    o.job.status.restarts = c.restarts;
    o.pods = AllPods("Running", c.restarts);
    for (auto [pod, code] : c.failed) {
      o.pods[pod].phase = "Failed";
      o.pods[pod].exit_code = code;
    }
    JobDecision d = StartDecision(o);
    EXPECT_EQ(FailurePolicy(o, Pointers(o.pods), d), c.flow);
    EXPECT_EQ(ConditionOf(d.status, kCondFailed), c.failed_condition);
    EXPECT_EQ(ConditionOf(d.status, kCondRestarting), c.restarting);
    EXPECT_EQ(d.restarted, !c.restarting.empty());
    EXPECT_EQ(d.status.restarts, c.restarts + (d.restarted ? 1 : 0));
    EXPECT_EQ(d.delete_pods.size(), c.deleted);
    if (!c.message_has.empty()) {
      const Condition* cond = FindCondition(d.status, c.restarting.empty() ? kCondFailed : kCondRestarting);
      EXPECT_NE(cond->message.find(c.message_has), std::string::npos) << cond->message;
    }
  }
}

}  // namespace
}  // namespace hetermoe::op
