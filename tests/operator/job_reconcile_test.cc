// The reconcile decision and the job's condition state machine, driven as
// the controller drives it: observe, decide, apply the decision to a fake
// cluster (pods as plain JSON), observe again.
#include "operator/core/job_reconcile.h"

#include <gtest/gtest.h>

#include "operator/core/children.h"
#include "operator/core/conditions.h"
#include "test_jobs.h"

namespace hetermoe::op {
namespace {

using nlohmann::json;

constexpr int64_t kT0 = 1747735200;  // 2025-05-20T10:00:00Z

// A tiny in-memory cluster: the job, its pods, service and plan ConfigMap.
struct FakeCluster {
  json job_object = fixtures::TinyJobJson();
  std::map<std::string, json> pods;
  bool service = false;
  std::optional<json> plan;
  std::vector<InventoryNode> nodes = fixtures::A40V100Nodes();
  int64_t now = kT0;
  TierPolicy placement;
  bool job_deleted = false;

  JobObservation Observe() {
    JobObservation o;
    o.job = ParseJob(job_object);
    for (const auto& [name, pod] : pods)
      if (auto p = ObservePod(pod)) o.pods.push_back(*p);
    o.service_exists = service;
    o.plan_config_map = plan;
    o.model_config = o.job.spec.model.config;
    o.nodes = nodes;
    o.now = now;
    return o;
  }

  // One reconcile: decide and carry out the decision (deletes of pods that
  // were running are graceful: they linger with deletionTimestamp once).
  JobDecision Step() {
    JobDecision d = DecideJob(Observe(), placement);
    if (d.apply_config_map) plan = *d.apply_config_map;
    if (d.apply_service) service = true;
    for (const json& pod : d.create_pods) pods.emplace(pod["metadata"]["name"].get<std::string>(), pod);
    for (const std::string& name : d.delete_pods) {
      json& pod = pods.at(name);
      if (pod["metadata"].contains("deletionTimestamp")) continue;
      pod["metadata"]["deletionTimestamp"] = FormatTime(now);
    }
    if (d.delete_job) job_deleted = true;
    job_object["status"] = StatusToJson(d.status);
    return d;
  }

  void FinishDeletions() {
    for (auto it = pods.begin(); it != pods.end();)
      it = it->second["metadata"].contains("deletionTimestamp") ? pods.erase(it) : std::next(it);
  }
  void SetPhase(const std::string& name, const std::string& phase, std::optional<int> exit_code = std::nullopt) {
    json& pod = pods.at(name);
    pod["status"]["phase"] = phase;
    if (exit_code)
      pod["status"]["containerStatuses"] = {
          {{"name", "trainer"}, {"state", {{"terminated", {{"exitCode", *exit_code}}}}}}};
  }
  void SetAll(const std::string& phase) {
    for (auto& [name, pod] : pods) pod["status"]["phase"] = phase;
  }
  JobStatus Status() { return ParseJobStatus(job_object["status"]); }
  std::string Reason(const char* type) {
    JobStatus s = Status();
    const Condition* c = FindCondition(s, type);
    return c ? c->reason : "";
  }
};

TEST(Reconcile, CreatesChildrenThenFollowsPodsToSuccess) {
  FakeCluster c;
  JobDecision d = c.Step();
  EXPECT_TRUE(d.apply_config_map && d.apply_service);
  EXPECT_EQ(d.create_pods.size(), 6u);
  EXPECT_FALSE(d.became_created) << "Created waits until the pods are seen";
  EXPECT_EQ(c.Status().state, "Pending");
  EXPECT_EQ(c.Status().start_time, FormatTime(kT0));
  ASSERT_TRUE(c.Status().plan);
  EXPECT_EQ(c.Status().plan->world_size, 6);
  EXPECT_EQ(c.Status().attention.active, 0) << "counts come from observed pods";

  d = c.Step();  // the caches caught up: nothing more to create
  EXPECT_TRUE(d.create_pods.empty());
  EXPECT_FALSE(d.apply_config_map) << "the plan is kept in its ConfigMap";
  EXPECT_TRUE(d.became_created);
  EXPECT_EQ(c.Status().state, "Created");
  EXPECT_EQ(c.Status().attention.active, 2);
  EXPECT_EQ(c.Status().expert.active, 4);

  c.SetAll("Running");
  c.now += 10;
  c.Step();
  EXPECT_EQ(c.Status().state, "Running");
  const std::string running_since = FindCondition(c.Status(), kCondRunning)->last_transition_time;
  c.now += 10;
  c.Step();
  EXPECT_EQ(FindCondition(c.Status(), kCondRunning)->last_transition_time, running_since)
      << "lastTransitionTime moves only when the status flips";

  c.SetAll("Succeeded");
  d = c.Step();
  EXPECT_TRUE(d.became_succeeded);
  EXPECT_EQ(c.Status().state, "Succeeded");
  EXPECT_EQ(c.Reason(kCondRunning), "JobSucceeded");
  EXPECT_TRUE(c.Status().completion_time);
  EXPECT_TRUE(d.delete_pods.empty()) << "cleanPodPolicy Running keeps finished pods";
  EXPECT_EQ(c.Status().expert.succeeded, 4);
}

TEST(Reconcile, RetryableFailureRestartsWholeJobUpToBackoffLimit) {
  FakeCluster c;  // backoffLimit 2
  c.Step();
  c.SetAll("Running");
  c.Step();
  for (int restart = 1; restart <= 2; ++restart) {
    c.SetPhase("tiny-expert-1", "Failed", 137);
    JobDecision d = c.Step();
    EXPECT_TRUE(d.restarted);
    EXPECT_EQ(c.Status().restarts, restart);
    EXPECT_EQ(c.Status().state, "Restarting");
    EXPECT_EQ(d.delete_pods.size(), 6u) << "the whole attempt goes";
    EXPECT_TRUE(d.create_pods.empty());

    d = c.Step();  // old pods still terminating: wait, never overlap attempts
    EXPECT_TRUE(d.create_pods.empty());
    EXPECT_TRUE(d.delete_pods.empty());
    EXPECT_EQ(c.Status().restarts, restart) << "a repeated decision does not count twice";

    c.FinishDeletions();
    d = c.Step();
    ASSERT_EQ(d.create_pods.size(), 6u);
    EXPECT_EQ(d.create_pods[0]["metadata"]["labels"][kLabelAttempt], std::to_string(restart));
    EXPECT_TRUE(d.apply_config_map) << "a new attempt gets a fresh plan";
    c.SetAll("Running");
    c.Step();
    EXPECT_EQ(c.Status().state, "Running");
    EXPECT_EQ(c.Reason(kCondRestarting), "Running");
  }
  c.SetPhase("tiny-attention-0", "Failed", 175);  // retryable, but no restarts left
  JobDecision d = c.Step();
  EXPECT_TRUE(d.became_failed);
  EXPECT_EQ(c.Status().state, "Failed");
  EXPECT_EQ(c.Reason(kCondFailed), "BackoffLimitExceeded");
  EXPECT_EQ(d.delete_pods.size(), 5u) << "cleanPodPolicy Running deletes the pods still running";
}

struct PolicyCase {
  std::string policy;
  int exit_code;
  bool restarts;
};
class RestartPolicy : public ::testing::TestWithParam<PolicyCase> {};

TEST_P(RestartPolicy, DecidesRetry) {
  const PolicyCase& p = GetParam();
  FakeCluster c;
  c.job_object["spec"]["expert"]["restartPolicy"] = p.policy;
  c.Step();
  c.SetAll("Running");
  c.Step();
  c.SetPhase("tiny-expert-0", "Failed", p.exit_code);
  JobDecision d = c.Step();
  EXPECT_EQ(d.restarted, p.restarts);
  EXPECT_EQ(c.Status().state, p.restarts ? "Restarting" : "Failed");
  if (!p.restarts) {
    EXPECT_EQ(c.Reason(kCondFailed), "PodFailed");
  }
}

INSTANTIATE_TEST_SUITE_P(Policies, RestartPolicy,
                         ::testing::Values(PolicyCase{"OnFailure", 1, false}, PolicyCase{"OnFailure", 2, false},
                                           PolicyCase{"OnFailure", 3, true}, PolicyCase{"OnFailure", 175, true},
                                           PolicyCase{"OnFailure", 143, true}, PolicyCase{"Always", 1, true},
                                           PolicyCase{"ExitCode", 175, true},
                                           PolicyCase{"Never", 137, false}, PolicyCase{"ExitCode", 1, false},
                                           PolicyCase{"ExitCode", 127, false}, PolicyCase{"ExitCode", 128, true},
                                           PolicyCase{"ExitCode", 137, true}),
                         [](const auto& info) {
                           return info.param.policy + "_" + std::to_string(info.param.exit_code);
                         });

// Someone deleted (or the node evicted) a running pod of the current
// attempt: the whole job restarts, it is not recreated alone.
TEST(Reconcile, DeletedPodRestartsTheWholeJob) {
  FakeCluster c;
  c.Step();
  c.SetAll("Running");
  c.Step();
  c.pods.at("tiny-expert-1")["metadata"]["deletionTimestamp"] = FormatTime(kT0);
  JobDecision d = c.Step();
  EXPECT_TRUE(d.restarted);
  EXPECT_EQ(c.Status().restarts, 1);
  EXPECT_EQ(c.Status().state, "Restarting");
  EXPECT_NE(FindCondition(c.Status(), kCondRestarting)->message.find("tiny-expert-1 was deleted"), std::string::npos);
  EXPECT_EQ(d.delete_pods.size(), 5u) << "the others of the attempt go too";
  EXPECT_TRUE(d.create_pods.empty());
}

// The trainer's one-line error (its termination message) reaches the condition.
TEST(Reconcile, PermanentFailureCarriesTheTrainersMessage) {
  FakeCluster c;
  c.Step();
  c.SetAll("Running");
  c.Step();
  c.SetPhase("tiny-attention-0", "Failed", 1);
  c.pods.at("tiny-attention-0")["status"]["containerStatuses"][0]["state"]["terminated"]["message"] =
      "placement: 0 experts\nhetermoe-trainer: error: /data/tokens.bin: cannot open (No such file or directory)\n";
  c.Step();
  EXPECT_EQ(c.Status().state, "Failed");
  EXPECT_EQ(c.Status().restarts, 0);
  const std::string message = FindCondition(c.Status(), kCondFailed)->message;
  EXPECT_NE(message.find("exit code 1: hetermoe-trainer: error: /data/tokens.bin: cannot open"), std::string::npos)
      << message;
}

TEST(Reconcile, ExitCodePolicyRetriesEvictions) {
  ObservedPod evicted;
  evicted.phase = "Failed";
  evicted.reason = "Evicted";
  EXPECT_TRUE(IsRetryableFailure("ExitCode", evicted));
}

TEST(Reconcile, SuspendDeletesPodsAndResumeRecreatesThem) {
  FakeCluster c;
  c.Step();
  c.SetAll("Running");
  c.Step();
  c.job_object["spec"]["runPolicy"]["suspend"] = true;
  JobDecision d = c.Step();
  EXPECT_EQ(d.delete_pods.size(), 6u);
  EXPECT_EQ(c.Status().state, "Suspended");
  EXPECT_FALSE(c.Status().start_time) << "the deadline counts from the resume";
  c.FinishDeletions();
  d = c.Step();
  EXPECT_TRUE(d.create_pods.empty()) << "no pods while suspended";

  c.job_object["spec"]["runPolicy"]["suspend"] = false;
  d = c.Step();
  EXPECT_EQ(d.create_pods.size(), 6u);
  EXPECT_EQ(c.Reason(kCondSuspended), "Resumed");
  EXPECT_EQ(c.Status().state, "Created");
  EXPECT_EQ(c.Status().restarts, 0) << "suspend is not a restart";
}

TEST(Reconcile, ActiveDeadline) {
  FakeCluster c;
  c.job_object["spec"]["runPolicy"]["activeDeadlineSeconds"] = 60;
  JobDecision d = c.Step();
  EXPECT_EQ(d.requeue_after_seconds, std::nullopt) << "no start time before the first pods";
  c.SetAll("Running");
  c.now += 30;
  d = c.Step();
  EXPECT_EQ(d.requeue_after_seconds, 30);
  c.now += 30;
  d = c.Step();
  EXPECT_EQ(c.Reason(kCondFailed), "DeadlineExceeded");
  EXPECT_EQ(d.delete_pods.size(), 6u);
}

TEST(Reconcile, InvalidSpecFailsWithoutChildren) {
  FakeCluster c;
  c.job_object["spec"]["training"]["microBatches"] = 3;
  JobDecision d = c.Step();
  EXPECT_TRUE(d.create_pods.empty());
  EXPECT_FALSE(d.apply_service || d.apply_config_map);
  EXPECT_EQ(c.Status().state, "Failed");
  EXPECT_EQ(c.Reason(kCondFailed), "InvalidSpec");
  EXPECT_NE(FindCondition(c.Status(), kCondFailed)->message.find("microBatches"), std::string::npos);
  EXPECT_TRUE(d.became_failed);
  d = c.Step();
  EXPECT_FALSE(d.became_failed) << "counted once";
}

TEST(Reconcile, NoGpusMeansPendingUnschedulable) {
  FakeCluster c;
  c.nodes.clear();
  JobDecision d = c.Step();
  EXPECT_TRUE(d.create_pods.empty());
  EXPECT_EQ(c.Status().state, "Pending");
  EXPECT_EQ(c.Reason(kCondCreated), "Unschedulable");
  EXPECT_EQ(d.requeue_after_seconds, 30);
  c.nodes = fixtures::A40V100Nodes();
  d = c.Step();
  EXPECT_EQ(d.create_pods.size(), 6u);
  c.Step();
  EXPECT_EQ(c.Status().state, "Created");
}

TEST(Reconcile, PodsFromANewerAttemptMeanTheCacheLags) {
  FakeCluster c;
  c.Step();
  for (auto& [name, pod] : c.pods) pod["metadata"]["labels"][kLabelAttempt] = "1";
  JobDecision d = c.Step();  // job status still says restarts 0
  EXPECT_TRUE(d.create_pods.empty());
  EXPECT_TRUE(d.delete_pods.empty());
  EXPECT_EQ(d.requeue_after_seconds, 1);
}

TEST(Reconcile, TtlAfterFinished) {
  FakeCluster c;
  c.job_object["spec"]["runPolicy"]["ttlSecondsAfterFinished"] = 100;
  c.job_object["spec"]["runPolicy"]["cleanPodPolicy"] = "All";
  c.Step();
  c.SetAll("Succeeded");
  JobDecision d = c.Step();
  EXPECT_EQ(d.delete_pods.size(), 6u) << "cleanPodPolicy All";
  EXPECT_EQ(d.requeue_after_seconds, 100);
  c.now += 40;
  d = c.Step();
  EXPECT_EQ(d.requeue_after_seconds, 60);
  EXPECT_FALSE(d.delete_job);
  c.now += 60;
  d = c.Step();
  EXPECT_TRUE(d.delete_job);
}

TEST(Reconcile, DeletedJobIsLeftAlone) {
  FakeCluster c;
  c.job_object["metadata"]["deletionTimestamp"] = FormatTime(kT0);
  JobDecision d = c.Step();
  EXPECT_TRUE(d.create_pods.empty());
}

TEST(Reconcile, MissingModelConfigWaits) {
  FakeCluster c;
  JobObservation o = c.Observe();
  o.model_config.reset();
  o.model_config_problem = "ConfigMap m not found";
  JobDecision d = DecideJob(o, c.placement);
  EXPECT_TRUE(d.create_pods.empty());
  EXPECT_EQ(d.status.state, "Pending");
  EXPECT_EQ(d.requeue_after_seconds, 10);
}

TEST(Conditions, StatePrecedence) {
  JobStatus s;
  EXPECT_EQ(StateOf(s), "Pending");
  SetCondition(s, kCondCreated, true, "r", "", "t");
  EXPECT_EQ(StateOf(s), "Created");
  SetCondition(s, kCondRunning, true, "r", "", "t");
  EXPECT_EQ(StateOf(s), "Running");
  SetCondition(s, kCondRestarting, true, "r", "", "t");
  EXPECT_EQ(StateOf(s), "Restarting");
  SetCondition(s, kCondSuspended, true, "r", "", "t");
  EXPECT_EQ(StateOf(s), "Suspended");
  SetCondition(s, kCondSucceeded, true, "r", "", "t");
  EXPECT_EQ(StateOf(s), "Succeeded");
  SetCondition(s, kCondFailed, true, "r", "", "t");
  EXPECT_EQ(StateOf(s), "Failed");
}

TEST(Conditions, TimeFormat) {
  EXPECT_EQ(FormatTime(kT0), "2025-05-20T10:00:00Z");
  EXPECT_EQ(ParseTime("2025-05-20T10:00:00Z"), kT0);
  EXPECT_EQ(ParseTime("2025-05-20T10:00:00.123456Z"), kT0);
  EXPECT_EQ(ParseTime("2025-05-20T12:00:00+02:00"), kT0);
}

}  // namespace
}  // namespace hetermoe::op
