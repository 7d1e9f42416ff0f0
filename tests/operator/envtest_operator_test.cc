// Integration tests: the operator against a real kube-apiserver + etcd
// (envtest.h). Each test works in its own namespace with its own operator
// instance(s); the tests act as the scheduler (binding pods to nodes) and
// the kubelet (pod phases, finishing graceful deletions). Waits poll with
// deadlines; nothing sleeps for a fixed time to let things happen.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "envtest.h"
#include "tests/support/loopback.h"
#include "operator/machinery/informer.h"
#include "operator/machinery/log.h"
#include "operator/controller/operator.h"
#include "operator/controller/progress_poller.h"
#include "operator/core/children.h"
#include "operator/core/gpu_classification.h"
#include "operator/kube/resource.h"
#include "test_jobs.h"
#include "yaml_json.h"

namespace hetermoe::op {
namespace {

using envtest::Eventually;
using nlohmann::json;

KubeClient& Api() { return envtest::Shared().client(); }

// The shared GPU nodes: 2 x 4 A40 (attention tier), 2 x 4 V100 (expert tier).
void EnsureNodes() {
  static bool created = false;
  if (created) return;
  for (int i = 0; i < 2; ++i) {
    for (auto [name, product, major, minor] :
         {std::tuple{"a40-" + std::to_string(i), "NVIDIA-A40", 8, 6},
          std::tuple{"v100-" + std::to_string(i), "Tesla-V100-SXM2-32GB", 7, 0}}) {
      json node = fixtures::GpuNodeJson(name, product, major, minor, 4);
      node["apiVersion"] = "v1";
      node["kind"] = "Node";
      try {
        Api().Create(kNodes.Path(), node);
      } catch (const ApiError& e) {
        if (!e.AlreadyExists()) throw;
      }
    }
  }
  created = true;
}

class OperatorEnv : public ::testing::Test {
 protected:
  void SetUp() override {
    try {
      envtest::Shared();
    } catch (const std::exception& e) {
      FAIL() << "envtest could not start: " << e.what();
    }
    SetLogQuiet(true);
    EnsureNodes();
    ns_ = "t-" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name());
    for (char& c : ns_) c = static_cast<char>(c == '_' ? '-' : std::tolower(static_cast<unsigned char>(c)));
    ns_ = ns_.substr(0, 60);
    Api().Create(kNamespaces.Path(), {{"apiVersion", "v1"}, {"kind", "Namespace"}, {"metadata", {{"name", ns_}}}});
  }
  void TearDown() override {
    operators_.clear();
    SetLogQuiet(false);
  }

  Operator& StartOperator(OperatorOptions options = {}) {
    options.namespace_ = ns_;
    options.workers = options.workers > 0 ? options.workers : 2;
    if (options.leader_elect) options.lease_namespace = ns_;
    operators_.push_back(std::make_unique<Operator>(envtest::Shared().AdminConfig(), options));
    operators_.back()->Start();
    return *operators_.back();
  }

  json CreateJob(const std::string& name, const std::function<void(json&)>& edit = nullptr) {
    json job = fixtures::TinyJobJson(name, ns_);
    for (const char* k : {"uid", "generation", "resourceVersion", "creationTimestamp"}) job["metadata"].erase(k);
    job["spec"]["checkpoint"] = json::object();  // no PVC in envtest
    if (edit) edit(job);
    return Api().Create(kHeterMoEJobs.Path(ns_), job);
  }
  json Job(const std::string& name) { return Api().Get(kHeterMoEJobs.Path(ns_, name)); }
  std::string State(const std::string& name) { return Job(name).value("status", json::object()).value("state", ""); }
  bool WaitState(const std::string& name, const std::string& state, double seconds = 30) {
    bool ok = Eventually([&] { return State(name) == state; }, seconds);
    if (!ok) ADD_FAILURE() << "job " << name << " never reached " << state << "; status: " << Job(name)["status"].dump();
    return ok;
  }
  std::vector<json> Pods(const std::string& job) {
    ListOptions o;
    o.label_selector = std::string(kLabelJobName) + "=" + job;
    return Api().ListAll(kPods.Path(ns_), o, nullptr);
  }
  bool WaitPods(const std::string& job, size_t n, double seconds = 30) {
    bool ok = Eventually(
        [&] {
          auto pods = Pods(job);
          size_t live = 0;
          for (const json& p : pods)
            if (!p["metadata"].contains("deletionTimestamp")) ++live;
          return live == n && pods.size() == n;
        },
        seconds);
    if (!ok) ADD_FAILURE() << "job " << job << ": wanted " << n << " pods, have " << Pods(job).size();
    return ok;
  }

  // The scheduler's part: bind to a node that matches the pod's GPU affinity.
  void Bind(const json& pod) {
    if (pod["spec"].contains("nodeName")) return;
    std::string node = "a40-0";
    const json terms = pod["spec"].value("affinity", json::object())
                           .value("nodeAffinity", json::object())
                           .value("requiredDuringSchedulingIgnoredDuringExecution", json::object())
                           .value("nodeSelectorTerms", json::array());
    for (const json& term : terms)
      for (const json& e : term.value("matchExpressions", json::array()))
        if (e["key"] == kGfdProduct && e["values"][0] == "Tesla-V100-SXM2-32GB") node = "v100-0";
    const std::string name = pod["metadata"]["name"];
    Api().Create(kPods.Path(ns_, name, "binding"),
                 {{"apiVersion", "v1"}, {"kind", "Binding"}, {"metadata", {{"name", name}}},
                  {"target", {{"apiVersion", "v1"}, {"kind", "Node"}, {"name", node}}}});
  }
  // The kubelet's part.
  void SetPhase(const std::string& pod, const std::string& phase, std::optional<int> exit_code = std::nullopt) {
    json status = {{"phase", phase}};
    if (exit_code)
      status["containerStatuses"] = {{{"name", "trainer"}, {"image", "x"}, {"imageID", ""}, {"ready", false},
                                      {"restartCount", 0},
                                      {"state", {{"terminated", {{"exitCode", *exit_code}}}}}}};
    Api().MergePatch(kPods.Path(ns_, pod, "status"), {{"status", status}});
  }
  void RunAll(const std::string& job, const std::string& phase = "Running") {
    for (const json& pod : Pods(job)) {
      Bind(Api().Get(kPods.Path(ns_, pod["metadata"]["name"])));
      SetPhase(pod["metadata"]["name"], phase);
    }
  }
  void FinishDeletions(const std::string& job) {
    for (const json& pod : Pods(job))
      if (pod["metadata"].contains("deletionTimestamp"))
        Api().Delete(kPods.Path(ns_, pod["metadata"]["name"]), {{"gracePeriodSeconds", 0}});
  }

  std::string ns_;
  std::vector<std::unique_ptr<Operator>> operators_;
};

TEST_F(OperatorEnv, NodesAreLabelledAndKeptInSync) {
  json node = fixtures::GpuNodeJson("relabel-0", "Tesla-V100-SXM2-32GB", 7, 0, 8);
  node["apiVersion"] = "v1";
  node["kind"] = "Node";
  node["spec"]["taints"] = {{{"key", "dedicated"}, {"value", "x"}, {"effect", "NoSchedule"}}};
  Api().Create(kNodes.Path(), node);
  Api().Create(kNodes.Path(), {{"apiVersion", "v1"}, {"kind", "Node"}, {"metadata", {{"name", "cpu-0"}}}});
  StartOperator();
  auto label = [](const std::string& node, const char* key) {
    json n = Api().Get(kNodes.Path("", node));
    return n["metadata"].value("labels", json::object()).value(key, "");
  };
  EXPECT_TRUE(Eventually([&] { return label("relabel-0", kLabelTier) == "expert"; }));
  EXPECT_EQ(label("relabel-0", kLabelGeneration), "volta");
  EXPECT_TRUE(Eventually([&] { return label("a40-1", kLabelTier) == "attention"; }));
  EXPECT_EQ(label("a40-1", kLabelGeneration), "ampere");

  // The driver reports a Hopper now: the labels follow.
  Api().MergePatch(kNodes.Path("", "relabel-0"),
                   {{"metadata", {{"labels", {{kGfdProduct, "NVIDIA-H100-80GB-HBM3"}, {kGfdComputeMajor, "9"}}}}}});
  EXPECT_TRUE(Eventually([&] { return label("relabel-0", kLabelGeneration) == "hopper"; }));
  EXPECT_EQ(label("relabel-0", kLabelTier), "attention");
  json after = Api().Get(kNodes.Path("", "relabel-0"));
  EXPECT_EQ(after["spec"], node["spec"]) << "no other node field is touched";
  EXPECT_EQ(after["status"]["allocatable"], node["status"]["allocatable"]);
  EXPECT_EQ(label("cpu-0", kLabelTier), "") << "nodes without GPUs get no labels";

  // GPUs gone: our labels go too.
  Api().MergePatch(kNodes.Path("", "relabel-0"),
                   {{"metadata", {{"labels", {{kGfdProduct, nullptr}, {kGfdComputeMajor, nullptr},
                                              {kGfdComputeMinor, nullptr}, {"nvidia.com/gpu.count", nullptr},
                                              {"nvidia.com/gpu.present", "false"}}}}}});
  EXPECT_TRUE(Eventually([&] { return label("relabel-0", kLabelTier).empty(); }));
  Api().Delete(kNodes.Path("", "relabel-0"));
  Api().Delete(kNodes.Path("", "cpu-0"));
}

TEST_F(OperatorEnv, JobRunsToSuccessWithCorrectPlacement) {
  Operator& op = StartOperator();
  CreateJob("tiny");
  ASSERT_TRUE(WaitPods("tiny", 6));
  json svc = Api().Get(kServices.Path(ns_, "tiny"));
  EXPECT_EQ(svc["spec"]["clusterIP"], "None");
  EXPECT_TRUE(svc["spec"]["publishNotReadyAddresses"].get<bool>());
  json cm = Api().Get(kConfigMaps.Path(ns_, "tiny-plan"));
  json plan = json::parse(cm["data"]["plan.json"].get<std::string>());
  EXPECT_EQ(plan["worldSize"], 6);
  EXPECT_TRUE(cm["data"].contains("run.yaml"));

  std::map<std::string, json> by_name;
  for (const json& p : Pods("tiny")) by_name[p["metadata"]["name"]] = p;
  const json& a0 = by_name.at("tiny-attention-0");
  EXPECT_EQ(a0["spec"]["hostname"], "tiny-attention-0");
  EXPECT_EQ(a0["spec"]["subdomain"], "tiny");
  EXPECT_EQ(a0["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"], "1");
  EXPECT_EQ(a0["metadata"]["ownerReferences"][0]["kind"], "HeterMoEJob");
  EXPECT_TRUE(a0["metadata"]["ownerReferences"][0]["controller"].get<bool>());
  EXPECT_EQ(a0["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
               ["nodeSelectorTerms"][0]["matchExpressions"][0]["values"],
            json({"NVIDIA-A40"}));
  const json& e3 = by_name.at("tiny-expert-3");
  EXPECT_EQ(e3["metadata"]["labels"][kLabelRole], "expert");
  EXPECT_EQ(e3["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
               ["nodeSelectorTerms"][0]["matchExpressions"][0]["values"],
            json({"Tesla-V100-SXM2-32GB"}));
  std::map<std::string, std::string> env;
  for (const json& e : e3["spec"]["containers"][0]["env"]) env[e["name"]] = e.value("value", "");
  EXPECT_EQ(env["RANK"], "5");
  EXPECT_EQ(env["WORLD_SIZE"], "6");

  RunAll("tiny");
  ASSERT_TRUE(WaitState("tiny", "Running"));
  json status = Job("tiny")["status"];
  EXPECT_EQ(status["replicaStatuses"]["attention"]["active"], 2);
  EXPECT_EQ(status["replicaStatuses"]["expert"]["active"], 4);
  EXPECT_EQ(status["plan"]["worldSize"], 6);
  EXPECT_EQ(status["observedGeneration"], 1);
  RunAll("tiny", "Succeeded");
  ASSERT_TRUE(WaitState("tiny", "Succeeded"));
  EXPECT_TRUE(Job("tiny")["status"].contains("completionTime"));
  // Counted right after the status write that the wait above saw.
  EXPECT_TRUE(Eventually([&] {
    return op.metrics().Text().find("hetermoe_jobs_succeeded_total{namespace=\"" + ns_ + "\"} 1") != std::string::npos;
  }));
}

TEST_F(OperatorEnv, AutoReplicasUseThePlanner) {
  StartOperator();
  CreateJob("auto", [](json& j) {
    j["spec"]["attention"]["replicas"] = "auto";
    j["spec"]["expert"]["replicas"] = "auto";
  });
  ASSERT_TRUE(Eventually([&] { return Job("auto")["status"].contains("plan"); }));
  json plan = Job("auto")["status"]["plan"];
  EXPECT_GT(plan["attentionReplicas"].get<int>(), 0);
  EXPECT_GT(plan["expertReplicas"].get<int>(), 0);
  EXPECT_LE(plan["worldSize"].get<int>(), 16) << "no more ranks than GPUs";
  // The planner decided, and the status says which shape won and which came next.
  EXPECT_EQ(plan["summary"].get<std::string>().rfind("planner: ", 0), 0u) << plan.dump();
  EXPECT_NE(plan.value("shape", "").find(" x ("), std::string::npos) << plan.dump();
  EXPECT_NE(plan.value("shape", "").find("predicted"), std::string::npos) << plan.dump();
  EXPECT_NE(plan.value("runnerUp", "").find(" x ("), std::string::npos) << plan.dump();
  ASSERT_TRUE(WaitPods("auto", plan["worldSize"].get<size_t>()));
  RecordProperty("plan", plan["summary"].get<std::string>());
}

TEST_F(OperatorEnv, FailedPodRestartsJobUpToBackoffLimit) {
  StartOperator();
  CreateJob("flaky", [](json& j) { j["spec"]["runPolicy"]["backoffLimit"] = 1; });
  ASSERT_TRUE(WaitPods("flaky", 6));
  RunAll("flaky");
  ASSERT_TRUE(WaitState("flaky", "Running"));
  std::set<std::string> first_uids;
  for (const json& p : Pods("flaky")) first_uids.insert(p["metadata"]["uid"]);

  SetPhase("flaky-expert-2", "Failed", 137);
  ASSERT_TRUE(Eventually([&] { return Job("flaky")["status"].value("restarts", 0) == 1; }));
  // Graceful deletions need the kubelet: finish them, then the new attempt comes.
  ASSERT_TRUE(Eventually([&] {
    FinishDeletions("flaky");
    auto pods = Pods("flaky");
    if (pods.size() != 6) return false;
    for (const json& p : pods)
      if (first_uids.count(p["metadata"]["uid"]) || p["metadata"]["labels"][kLabelAttempt] != "1") return false;
    return true;
  }));
  RunAll("flaky");
  ASSERT_TRUE(WaitState("flaky", "Running"));

  SetPhase("flaky-attention-1", "Failed", 175);  // the trainer's retryable status
  ASSERT_TRUE(WaitState("flaky", "Failed"));
  json status = Job("flaky")["status"];
  bool backoff = false;
  for (const json& c : status["conditions"])
    if (c["type"] == "Failed") backoff = c["reason"] == "BackoffLimitExceeded";
  EXPECT_TRUE(backoff) << status.dump();
  EXPECT_EQ(status["restarts"], 1);
  // What `kubectl describe hmj flaky` lists: the restart and the failure as Warnings.
  std::multiset<std::string> warnings;
  for (const json& e : Api().ListAll(kEvents.Path(ns_), {}, nullptr))
    if (e["involvedObject"]["name"] == "flaky" && e["type"] == "Warning") warnings.insert(e["reason"]);
  EXPECT_EQ(warnings.count("PodFailed"), 1u) << "one restart";
  EXPECT_EQ(warnings.count("BackoffLimitExceeded"), 1u);
}

// A plan ConfigMap of the current attempt whose plan.json cannot be read is
// planned again from the nodes (it once left the job Unschedulable forever:
// the controller skipped the node inventory for any ConfigMap of the attempt).
TEST_F(OperatorEnv, UnreadablePlanIsMadeAgain) {
  StartOperator();
  CreateJob("replan");
  ASSERT_TRUE(WaitPods("replan", 6));
  Api().MergePatch(kConfigMaps.Path(ns_, "replan-plan"), {{"data", {{"plan.json", "not a plan"}}}});
  EXPECT_TRUE(Eventually([&] {
    const json cm = Api().Get(kConfigMaps.Path(ns_, "replan-plan"));
    return !json::parse(cm["data"].value("plan.json", ""), nullptr, false).is_discarded();
  })) << "the operator wrote the plan again";
  const json status = Job("replan")["status"];
  EXPECT_NE(status.value("state", ""), "Pending") << status.dump();
}

TEST_F(OperatorEnv, SuspendDeletesPodsAndResumeRecreatesThem) {
  StartOperator();
  CreateJob("pause");
  ASSERT_TRUE(WaitPods("pause", 6));
  RunAll("pause");
  ASSERT_TRUE(WaitState("pause", "Running"));
  Api().MergePatch(kHeterMoEJobs.Path(ns_, "pause"), {{"spec", {{"runPolicy", {{"suspend", true}}}}}});
  ASSERT_TRUE(WaitState("pause", "Suspended"));
  ASSERT_TRUE(Eventually([&] {
    FinishDeletions("pause");
    return Pods("pause").empty();
  }));
  Api().MergePatch(kHeterMoEJobs.Path(ns_, "pause"), {{"spec", {{"runPolicy", {{"suspend", false}}}}}});
  ASSERT_TRUE(WaitPods("pause", 6));
  EXPECT_EQ(Job("pause")["status"]["restarts"], 0);
}

TEST_F(OperatorEnv, InvalidSpecFailsWithoutChildren) {
  StartOperator();
  CreateJob("bad", [](json& j) { j["spec"]["training"]["microBatches"] = 3; });
  ASSERT_TRUE(WaitState("bad", "Failed"));
  json cond, bad = Job("bad");
  for (const json& c : bad["status"]["conditions"])
    if (c["type"] == "Failed") cond = c;
  EXPECT_EQ(cond["reason"], "InvalidSpec") << Job("bad")["status"].dump();
  EXPECT_NE(cond["message"].get<std::string>().find("microBatches"), std::string::npos);
  EXPECT_TRUE(Pods("bad").empty());
  EXPECT_THROW(Api().Get(kServices.Path(ns_, "bad")), ApiError);
}

TEST_F(OperatorEnv, ConcurrentStatusWritersAreNotClobbered) {
  OperatorOptions four_workers;
  four_workers.workers = 4;
  Operator& op = StartOperator(four_workers);
  CreateJob("busy");
  ASSERT_TRUE(WaitPods("busy", 6));
  // A second writer (the trainer reporting progress) races the operator.
  std::atomic<bool> stop{false};
  std::atomic<int> written{0};
  std::thread writer([&] {
    for (int step = 1; !stop && step <= 400; ++step) {
      try {
        Api().MergePatch(kHeterMoEJobs.Path(ns_, "busy", "status"),
                         {{"status", {{"progress", {{"step", step}, {"totalSteps", 100}, {"percentage", 1.0}}}}}});
        written = step;
      } catch (const ApiError&) {
      }
    }
  });
  RunAll("busy");
  bool running = WaitState("busy", "Running");
  stop = true;
  writer.join();
  ASSERT_TRUE(running);
  // The operator's own writes carry the resourceVersion: a write that lost
  // the race (409) is redone on a fresh read, so the writer's progress stays.
  ASSERT_TRUE(Eventually([&] { return Job("busy")["status"]["progress"]["step"] == written.load(); }, 10));
  // A stale resourceVersion is a 409 the client reports as Conflict.
  json stale = {{"metadata", {{"resourceVersion", "1"}}}, {"status", {{"restarts", 0}}}};
  try {
    Api().MergePatch(kHeterMoEJobs.Path(ns_, "busy", "status"), stale);
    ADD_FAILURE() << "expected 409";
  } catch (const ApiError& e) {
    EXPECT_TRUE(e.Conflict()) << e.what();
  }
  (void)op;
}

TEST_F(OperatorEnv, RestartedOperatorCreatesNoDuplicatePods) {
  Operator& first = StartOperator();
  CreateJob("steady");
  ASSERT_TRUE(WaitPods("steady", 6));
  std::set<std::string> uids;
  for (const json& p : Pods("steady")) uids.insert(p["metadata"]["uid"]);
  first.Kill();  // no graceful anything
  Operator& second = StartOperator();
  RunAll("steady");
  ASSERT_TRUE(WaitState("steady", "Running"));
  std::set<std::string> after;
  for (const json& p : Pods("steady")) after.insert(p["metadata"]["uid"]);
  EXPECT_EQ(after, uids) << "the same six pods, none recreated or duplicated";
  (void)second;
}

TEST_F(OperatorEnv, ApiserverRestartAndCompactionLoseNoWork) {
  Operator& op = StartOperator();
  CreateJob("survivor");
  ASSERT_TRUE(WaitPods("survivor", 6));
  RunAll("survivor");
  ASSERT_TRUE(WaitState("survivor", "Running"));
  const uint64_t relists_before = op.pod_informer().relists();
  // Move etcd's revision past what the informers saw, compact the history
  // away, and restart the apiserver: resuming watches get 410 and relist.
  for (int i = 0; i < 20; ++i)
    Api().Apply(kConfigMaps.Path("default", "churn"),
                {{"apiVersion", "v1"}, {"kind", "ConfigMap"}, {"metadata", {{"name", "churn"}, {"namespace", "default"}}},
                 {"data", {{"i", std::to_string(i)}}}},
                "envtest");
  envtest::Shared().CompactEtcd();
  envtest::Shared().RestartApiserver();
  // Work that happened while the operator was cut off must not be lost.
  RunAll("survivor", "Succeeded");
  ASSERT_TRUE(WaitState("survivor", "Succeeded", 60));
  EXPECT_GT(op.pod_informer().relists(), relists_before) << "410 led to a relist";
  auto pods = Pods("survivor");
  EXPECT_EQ(pods.size(), 6u) << "no duplicate pods";
  EXPECT_EQ(Job("survivor")["status"]["restarts"], 0);
}

TEST_F(OperatorEnv, OneLeaderAndTakeoverAfterLeaseExpiry) {
  OperatorOptions o;
  o.leader_elect = true;
  o.lease_name = "hetermoe-" + ns_;
  o.lease_seconds = 3;
  o.renew_deadline_seconds = 2;
  o.retry_period_seconds = 0.5;
  o.identity = "alpha";
  Operator& alpha = StartOperator(o);
  o.identity = "beta";
  Operator& beta = StartOperator(o);
  ASSERT_TRUE(Eventually([&] { return alpha.IsLeader() || beta.IsLeader(); }, 10));
  Operator& leader = alpha.IsLeader() ? alpha : beta;
  Operator& follower = alpha.IsLeader() ? beta : alpha;
  // Stays exclusive while the leader renews.
  EXPECT_FALSE(Eventually([&] { return follower.IsLeader(); }, 2));
  json lease = Api().Get(kLeases.Path(ns_, o.lease_name));
  EXPECT_EQ(lease["spec"]["holderIdentity"], leader.identity());

  CreateJob("led");
  ASSERT_TRUE(WaitPods("led", 6));
  leader.Kill();  // crashes: the Lease is not handed back
  ASSERT_TRUE(Eventually([&] { return follower.IsLeader(); }, 15)) << "takeover after the lease expires";
  lease = Api().Get(kLeases.Path(ns_, o.lease_name));
  EXPECT_EQ(lease["spec"]["holderIdentity"], follower.identity());
  EXPECT_GE(lease["spec"]["leaseTransitions"].get<int>(), 1);
  RunAll("led");
  ASSERT_TRUE(WaitState("led", "Running")) << "the new leader does the work";
  EXPECT_EQ(Pods("led").size(), 6u);
}

TEST_F(OperatorEnv, BinaryServesProbesAndMetricsAndStopsOnSigterm) {
  const std::string binary = HETERMOE_OPERATOR_BINARY;
  const int health = testing::FreeLoopbackPort(), metrics = testing::FreeLoopbackPort();
  const std::string log = envtest::Shared().dir() + "/operator-binary.log";
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    execl(binary.c_str(), binary.c_str(), "--kubeconfig", envtest::Shared().kubeconfig_path().c_str(), "--namespace",
          ns_.c_str(), "--health-probe-bind-address", ("127.0.0.1:" + std::to_string(health)).c_str(),
          "--metrics-bind-address", ("127.0.0.1:" + std::to_string(metrics)).c_str(), "--workers", "2",
          "--log-format", "json", static_cast<char*>(nullptr));
    _exit(127);
  }
  // HttpGet answers only for 200.
  auto get = [](int port, const std::string& path) { return HttpGet("127.0.0.1", port, path, 2.0).value_or(""); };
  EXPECT_TRUE(Eventually([&] { return HttpGet("127.0.0.1", health, "/readyz", 2.0).has_value(); }, 20));
  EXPECT_EQ(get(health, "/healthz"), "ok\n");
  CreateJob("viabinary");
  EXPECT_TRUE(WaitPods("viabinary", 6));
  std::string text;
  EXPECT_TRUE(Eventually([&] {
    text = get(metrics, "/metrics");
    // Created (hence the created counter) follows once the pods are seen.
    return text.find("controller_runtime_reconcile_total{controller=\"hetermoejob\"") != std::string::npos &&
           text.find("hetermoe_jobs_created_total") != std::string::npos;
  }));
  for (const char* name : {"controller_runtime_reconcile_time_seconds", "workqueue_depth", "workqueue_adds_total",
                           "rest_client_requests_total", "hetermoe_jobs_created_total"})
    EXPECT_NE(text.find(name), std::string::npos) << name;
  kill(pid, SIGTERM);
  int status = 0;
  EXPECT_TRUE(Eventually([&] { return waitpid(pid, &status, WNOHANG) == pid; }, 20));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "graceful exit on SIGTERM";
}

TEST_F(OperatorEnv, ProgressIsReadFromRankZero) {
  // Rank 0's metrics endpoint, as hetermoe-trainer serves it.
  int port = 0;
  const int listener = testing::ListenOnLoopback(8, &port);
  std::atomic<bool> stop{false};
  std::thread server([&] {
    while (!stop) {
      pollfd p{listener, POLLIN, 0};
      if (poll(&p, 1, 100) != 1) continue;
      int c = accept(listener, nullptr, nullptr);
      char buf[1024];
      recv(c, buf, sizeof buf, 0);
      std::string body = "hetermoe_trainer_step 42\nhetermoe_trainer_loss 3.5\nhetermoe_trainer_tokens_per_second 2048\n";
      std::string response = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " +
                             std::to_string(body.size()) + "\r\n\r\n" + body;
      send(c, response.data(), response.size(), MSG_NOSIGNAL);
      close(c);
    }
  });
  StartOperator();
  CreateJob("watched", [&](json& j) { j["spec"]["monitoring"] = {{"metricsPort", port}, {"progressIntervalSeconds", 1}}; });
  ASSERT_TRUE(WaitPods("watched", 6));
  RunAll("watched");
  Api().MergePatch(kPods.Path(ns_, "watched-attention-0", "status"),
                   {{"status", {{"podIP", "127.0.0.1"}, {"podIPs", {{{"ip", "127.0.0.1"}}}}}}});
  ASSERT_TRUE(WaitState("watched", "Running"));
  bool read = Eventually([&] { return Job("watched")["status"].value("progress", json::object()).value("step", 0) == 42; });
  stop = true;
  server.join();
  close(listener);
  ASSERT_TRUE(read) << Job("watched")["status"].dump();
  json progress = Job("watched")["status"]["progress"];
  EXPECT_EQ(progress["totalSteps"], 100);
  EXPECT_DOUBLE_EQ(progress["percentage"].get<double>(), 42.0);
  EXPECT_DOUBLE_EQ(progress["loss"].get<double>(), 3.5);
  EXPECT_DOUBLE_EQ(progress["tokensPerSecond"].get<double>(), 2048);
  EXPECT_DOUBLE_EQ(progress["etaSeconds"].get<double>(), 58.0 * 16 * 128 / 2048);
  json listed = Api().Get(kHeterMoEJobs.Path(ns_, "watched"));
  EXPECT_EQ(listed["status"]["state"], "Running") << "the progress patch leaves the rest of the status alone";
}

TEST_F(OperatorEnv, ExamplesAreStoredWithoutPruningAndDefaulted) {
  // What `kubectl apply -f examples/...` does, minus kubectl: every field
  // of an example survives the structural schema's pruning.
  std::function<void(const json&, const json&, const std::string&)> contained = [&](const json& want, const json& got,
                                                                                   const std::string& path) {
    if (want.is_object()) {
      ASSERT_TRUE(got.is_object()) << path;
      for (auto it = want.begin(); it != want.end(); ++it) {
        ASSERT_TRUE(got.contains(it.key())) << path << "." << it.key() << " was pruned";
        contained(*it, got[it.key()], path + "." + it.key());
      }
    } else if (!want.is_array()) {
      EXPECT_EQ(want, got) << path;
    }
  };
  int stored = 0;
  for (const char* file : {"hetermoejob-a40-v100.yaml", "hetermoejob-h100-v100.yaml", "hetermoejob-cpu.yaml",
                           "hetermoejob-finetune-a100-v100.yaml"}) {
    for (json doc : fixtures::LoadYamlDocuments(std::string(HETERMOE_SOURCE_DIR) + "/examples/" + file)) {
      if (doc.value("kind", "") != kKind) continue;
      json created = Api().Create(kHeterMoEJobs.Path(ns_), doc);
      contained(doc["spec"], created["spec"], std::string(file) + ":spec");
      EXPECT_EQ(created["spec"]["parallel"]["masterPort"], 29500) << file << ": defaults applied";
      EXPECT_EQ(created["spec"]["runPolicy"].contains("backoffLimit"), true) << file;
      ++stored;
    }
  }
  EXPECT_EQ(stored, 4);
  json list = Api().List(kHeterMoEJobs.Path(ns_));
  EXPECT_EQ(list["items"].size(), 4u);
}

TEST_F(OperatorEnv, FinishedJobIsCleanedUpAndExpires) {
  StartOperator();
  CreateJob("brief", [](json& j) {
    j["spec"]["runPolicy"]["cleanPodPolicy"] = "All";
    j["spec"]["runPolicy"]["ttlSecondsAfterFinished"] = 1;
  });
  ASSERT_TRUE(WaitPods("brief", 6));
  RunAll("brief", "Succeeded");
  ASSERT_TRUE(Eventually([&] {
    FinishDeletions("brief");
    return Pods("brief").empty();
  })) << "cleanPodPolicy All deletes the finished pods; left: " << [&] {
    std::string left;
    for (const json& p : Pods("brief"))
      left += p["metadata"]["name"].get<std::string>() + "/" + p["status"].value("phase", "") +
              (p["metadata"].contains("deletionTimestamp") ? "/deleting " : " ");
    try {
      left += "job status: " + Job("brief")["status"].dump();
    } catch (const ApiError& e) {
      left += e.what();
    }
    return left;
  }();
  EXPECT_TRUE(Eventually([&] {
    try {
      Job("brief");
      return false;
    } catch (const ApiError& e) {
      return e.NotFound();
    }
  })) << "deleted ttlSecondsAfterFinished after completion; status: " << Job("brief")["status"].dump();
}

}  // namespace
}  // namespace hetermoe::op
