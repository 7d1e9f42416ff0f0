// Children of a job: the Service, the plan ConfigMap and the pods, pinned as
// golden JSON (tests/operator/golden/). After an intended change, rewrite
// them with HETERMOE_UPDATE_GOLDEN=1 and review the diff.
#include "operator/core/children.h"

#include <cstdlib>
#include <map>
#include <regex>
#include <set>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "test_jobs.h"
#include "yaml_json.h"

namespace hetermoe::op {
namespace {

using nlohmann::json;

void ExpectGolden(const json& actual, const std::string& name) {
  const std::string path = std::string(HETERMOE_OPERATOR_TEST_DIR) + "/golden/" + name;
  if (const char* update = std::getenv("HETERMOE_UPDATE_GOLDEN"); update && std::string(update) == "1") {
    std::ofstream(path) << actual.dump(2) << "\n";
    return;
  }
  std::ifstream in(path);
  ASSERT_TRUE(in) << "missing golden file " << path << " (HETERMOE_UPDATE_GOLDEN=1 writes it)";
  json expected = json::parse(in);
  EXPECT_EQ(actual, expected) << name << " differs; diff:\n" << json::diff(expected, actual).dump(2);
}

PlacementDecision TinyPlacement(const HeterMoEJob& job) {
  PlacementRequest request;
  request.spec = &job.spec;
  request.model = io::ParseMixtralConfigText(fixtures::kTinyModel, "test");
  request.nodes = fixtures::A40V100Nodes();
  PlacementDecision d = TierPolicy().Place(request);
  FinishEnginePlan(job.spec, request.model, d);
  return d;
}

TEST(Children, Golden) {
  HeterMoEJob job = fixtures::TinyJob();
  PlacementDecision placement = TinyPlacement(job);
  ExpectGolden(BuildService(job), "tiny-service.json");
  ExpectGolden(BuildPlanConfigMap(job, placement, fixtures::kTinyModel, 0), "tiny-plan-configmap.json");
  ExpectGolden(BuildPod(job, placement, Role::kAttention, 0, 0), "tiny-attention-0.json");
  ExpectGolden(BuildPod(job, placement, Role::kExpert, 3, 1), "tiny-expert-3-attempt-1.json");
}

TEST(Children, RanksAndEnvironment) {
  HeterMoEJob job = fixtures::TinyJob();
  PlacementDecision placement = TinyPlacement(job);
  std::set<std::string> ranks;
  for (Role role : {Role::kAttention, Role::kExpert}) {
    int64_t n = role == Role::kAttention ? placement.attention.replicas : placement.expert.replicas;
    for (int64_t i = 0; i < n; ++i) {
      json pod = BuildPod(job, placement, role, i, 0);
      std::map<std::string, std::string> env;
      for (const json& e : pod["spec"]["containers"][0]["env"]) env[e["name"]] = e.value("value", "");
      EXPECT_EQ(env["WORLD_SIZE"], "6");
      EXPECT_EQ(env["MASTER_ADDR"], "tiny-attention-0.tiny.team-a.svc");
      EXPECT_EQ(env["HETERMOE_ROLE"], RoleName(role));
      EXPECT_EQ(env["HETERMOE_ROLE_RANK"], std::to_string(i));
      EXPECT_EQ(pod["metadata"]["labels"][kLabelRank], env["RANK"]);
      ranks.insert(env["RANK"]);
    }
  }
  EXPECT_EQ(ranks, (std::set<std::string>{"0", "1", "2", "3", "4", "5"}));
}

// With several ZP groups, pods take the engine's ranks: group by group, each
// group's attention ranks first; the rank's role in plan.json's engine
// placement is the pod's role.
TEST(Children, RanksFollowTheEngineAcrossGroups) {
  json object = fixtures::TinyJobJson();
  object["spec"]["parallel"] = {{"zpGroups", 2}};
  HeterMoEJob job = ParseJob(object);
  PlacementDecision d = TinyPlacement(job);
  ASSERT_EQ(d.zp_groups, 2);
  // 2 groups of 1 attention + 2 expert ranks: A E E | A E E.
  EXPECT_EQ(RankOf(d, Role::kAttention, 0), 0);
  EXPECT_EQ(RankOf(d, Role::kAttention, 1), 3);
  EXPECT_EQ(RankOf(d, Role::kExpert, 0), 1);
  EXPECT_EQ(RankOf(d, Role::kExpert, 3), 5);
  for (Role role : {Role::kAttention, Role::kExpert})
    for (int64_t i = 0; i < (role == Role::kAttention ? 2 : 4); ++i) {
      const int64_t rank = RankOf(d, role, i);
      EXPECT_EQ(d.engine["ranks"][rank]["role"], RoleName(role)) << "rank " << rank;
      json pod = BuildPod(job, d, role, i, 0);
      EXPECT_EQ(pod["metadata"]["labels"][kLabelRank], std::to_string(rank));
    }
  const std::string yaml = RunFileYaml(job, d);
  EXPECT_NE(yaml.find("attention_ranks: 1\n"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("expert_ranks: 2\n"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("groups: 2\n"), std::string::npos) << yaml;

  object["spec"]["parallel"] = {{"zpGroups", 3}};  // 2 attention pods cannot form 3 groups
  job = ParseJob(object);
  EXPECT_THROW(TinyPlacement(job), PlacementError);
}

TEST(Children, EngineRefusesWhatItCannotRun) {
  json object = fixtures::TinyJobJson();
  object["spec"]["training"]["microBatches"] = 1;  // 2 attention ranks need whole micro-batches
  HeterMoEJob job = ParseJob(object);
  try {
    TinyPlacement(job);
    FAIL() << "expected PlacementError";
  } catch (const PlacementError& e) {
    EXPECT_NE(std::string(e.what()).find("micro_batches"), std::string::npos) << e.what();
  }
}

TEST(Children, AsymEaFollowsTheSpec) {
  json object = fixtures::TinyJobJson();
  HeterMoEJob job = ParseJob(object);
  EXPECT_EQ(TinyPlacement(job).asym_ea, "auto");
  object["spec"]["dispatch"] = {{"asymmetricOffload", false}};
  job = ParseJob(object);
  EXPECT_EQ(TinyPlacement(job).asym_ea, "off");
  object["spec"]["dispatch"] = json::object();
  object["spec"]["parallel"] = {{"schedule", "ep"}};
  object["spec"]["training"]["globalBatch"] = 12;  // ep: all 6 ranks take micro-batches
  object["spec"]["training"]["microBatches"] = 6;
  job = ParseJob(object);
  EXPECT_EQ(TinyPlacement(job).asym_ea, "off");
}

// What the operator makes for a job: the plan ConfigMap (run.yaml, plan.json)
// and every pod.
json Made(const json& object) {
  HeterMoEJob job = ParseJob(object);
  PlacementDecision d = TinyPlacement(job);
  json out = {{"configMap", BuildPlanConfigMap(job, d, fixtures::kTinyModel, 0)}, {"pods", json::array()}};
  for (Role role : {Role::kAttention, Role::kExpert})
    for (int64_t i = 0; i < (role == Role::kAttention ? d.attention.replicas : d.expert.replicas); ++i)
      out["pods"].push_back(BuildPod(job, d, role, i, 0));
  return out;
}

// No setting is silently ignored: every field of the sections the trainer
// uses changes what the pods get (run file, plan or pod spec), and a new
// field in those sections of the CRD fails this test until it is listed
// here, i.e. until it reaches the pods. Fields the reconciler itself uses
// (replicas, restartPolicy, gpuSelector, runPolicy, progressIntervalSeconds,
// where config.json comes from) are checked by the reconcile tests.
TEST(Children, EveryTrainerFieldReachesThePods) {
  const std::map<std::string, json> changed = {
      {"spec.training.data", "/other/tokens.bin"}, {"spec.training.steps", 7},
      {"spec.training.globalBatch", 32},           {"spec.training.microBatches", 4},
      {"spec.training.seqLen", 64},                {"spec.training.lr", 0.5},
      {"spec.training.schedule", "cosine"},        {"spec.training.warmupSteps", 3},
      {"spec.training.minLr", 1e-4},               {"spec.training.beta1", 0.8},
      {"spec.training.beta2", 0.9},                {"spec.training.eps", 1e-6},
      {"spec.training.weightDecay", 0.01},         {"spec.training.gradClip", 0.5},
      {"spec.training.seed", 7},                   {"spec.parallel.schedule", "sequential"},
      {"spec.training.precision", "fp16"},         {"spec.dispatch.transport", "gloo"},
      {"spec.training.zero", 1},                   {"spec.training.recompute", "full"},                      {"spec.parallel.microBatchesInFlight", 2},
      {"spec.parallel.zpGroups", 2},               {"spec.parallel.masterPort", 1234},
      {"spec.parallel.timeoutSeconds", 77},        {"spec.dispatch.asymmetricOffload", false},
      {"spec.dispatch.dedup", false},              {"spec.model.init", "/weights/model.safetensors"},
      {"spec.dispatch.swapEvery", 4},              {"spec.dispatch.dedupDepth", "node"},
      {"spec.checkpoint.claimName", "other"},      {"spec.checkpoint.mountPath", "/ck"},
      {"spec.checkpoint.intervalSteps", 9},        {"spec.monitoring.metricsPort", 9191},
      {"spec.monitoring.metricsLingerSeconds", 15},
      {"spec.training.validData", "/data/valid.bin"}, {"spec.training.evalEvery", 5},
      {"spec.training.evalBatches", 3},            {"spec.training.tokenizer", "/data/tokenizer.model"},
      {"spec.training.shuffle", true},             {"spec.checkpoint.dtype", "bf16"},
      {"spec.attention.gpusPerReplica", 0},        {"spec.attention.template", json::object()},
  };
  const std::set<std::string> elsewhere = {"spec.model.config", "spec.model.configMap",
                                           "spec.monitoring.progressIntervalSeconds"};
  const json crd = fixtures::LoadYamlDocuments(std::string(HETERMOE_SOURCE_DIR) + "/crds/hetermoe.io_hetermoejobs.yaml")[0];
  const json& spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
  for (const char* section : {"training", "parallel", "dispatch", "model", "checkpoint", "monitoring"})
    for (auto it = spec[section]["properties"].begin(); it != spec[section]["properties"].end(); ++it) {
      const std::string path = std::string("spec.") + section + "." + it.key();
      EXPECT_TRUE(changed.count(path) || elsewhere.count(path)) << path << " reaches no pod: list it here once it does";
    }

  const json base = fixtures::TinyJobJson();
  const json before = Made(base);
  for (const auto& [path, value] : changed) {
    json object = base;
    json::json_pointer pointer("/" + std::regex_replace(path, std::regex("\\."), "/"));
    object[pointer] = value;
    EXPECT_NE(Made(object), before) << path << " changes nothing the pods get";
  }
}

TEST(Children, TemplateAffinityIsKeptAndExtended) {
  json object = fixtures::TinyJobJson();
  object["spec"]["attention"]["template"]["spec"]["affinity"] = {
      {"nodeAffinity",
       {{"requiredDuringSchedulingIgnoredDuringExecution",
         {{"nodeSelectorTerms",
           {{{"matchExpressions", {{{"key", "zone"}, {"operator", "In"}, {"values", {"a"}}}}}},
            {{"matchExpressions", {{{"key", "zone"}, {"operator", "In"}, {"values", {"b"}}}}}}}}}}}}};
  HeterMoEJob job = ParseJob(object);
  json pod = BuildPod(job, TinyPlacement(job), Role::kAttention, 0, 0);
  const json& terms =
      pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
  ASSERT_EQ(terms.size(), 2u);
  for (const json& term : terms) {
    ASSERT_EQ(term["matchExpressions"].size(), 2u) << "each ORed term also requires the GPU product";
    EXPECT_EQ(term["matchExpressions"][1]["key"], "nvidia.com/gpu.product");
    EXPECT_EQ(term["matchExpressions"][1]["values"], json({"NVIDIA-A40"}));
  }
}

TEST(Children, CpuPodsHaveNoGpuLimitsOrAffinity) {
  json object = fixtures::TinyJobJson();
  object["spec"]["attention"]["gpusPerReplica"] = 0;
  object["spec"]["expert"]["gpusPerReplica"] = 0;
  HeterMoEJob job = ParseJob(object);
  PlacementRequest request{&job.spec, io::ParseMixtralConfigText(fixtures::kTinyModel, "t"), {}};
  PlacementDecision placement = TierPolicy().Place(request);
  FinishEnginePlan(job.spec, request.model, placement);
  json pod = BuildPod(job, placement, Role::kExpert, 0, 0);
  EXPECT_FALSE(pod["spec"].contains("affinity"));
  EXPECT_FALSE(pod["spec"]["containers"][0].contains("resources"));
  EXPECT_FALSE(pod["spec"].contains("tolerations"));
}

TEST(Children, GangSchedulers) {
  json object = fixtures::TinyJobJson();
  object["spec"]["runPolicy"]["schedulingPolicy"] = {
      {"scheduler", "volcano"}, {"queue", "research"}, {"minAvailable", 6}, {"priorityClass", "high"}};
  HeterMoEJob job = ParseJob(object);
  PlacementDecision placement = TinyPlacement(job);
  json pod = BuildPod(job, placement, Role::kAttention, 0, 0);
  EXPECT_EQ(pod["spec"]["schedulerName"], "volcano");
  EXPECT_EQ(pod["spec"]["priorityClassName"], "high");
  EXPECT_EQ(pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"], "tiny");
  json group = BuildPodGroup(job, placement);
  EXPECT_EQ(group["spec"]["minMember"], 6);
  EXPECT_EQ(group["spec"]["queue"], "research");

  object["spec"]["runPolicy"]["schedulingPolicy"] = {{"scheduler", "kueue"}, {"queue", "team-a-queue"}};
  job = ParseJob(object);
  pod = BuildPod(job, placement, Role::kExpert, 0, 0);
  EXPECT_EQ(pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"], "team-a-queue");
  EXPECT_EQ(pod["metadata"]["annotations"]["kueue.x-k8s.io/pod-group-total-count"], "6");
  EXPECT_FALSE(pod["spec"].contains("schedulerName"));
}

TEST(Placement, TierRuleAutoAndLimits) {
  json object = fixtures::TinyJobJson();
  object["spec"]["attention"]["replicas"] = "auto";
  object["spec"]["expert"]["replicas"] = "auto";
  HeterMoEJob job = ParseJob(object);
  PlacementRequest request{&job.spec, io::ParseMixtralConfigText(fixtures::kTinyModel, "t"), fixtures::A40V100Nodes()};
  PlacementDecision d = TierPolicy().Place(request);
  EXPECT_EQ(d.attention.replicas, 8);  // 2 A40 nodes x 4
  EXPECT_EQ(d.expert.replicas, 8);     // 8 V100 GPUs, 8 experts

  object["spec"]["attention"]["replicas"] = 9;  // only 8 A40s
  job = ParseJob(object);
  request.spec = &job.spec;
  EXPECT_THROW(TierPolicy().Place(request), PlacementError);

  object["spec"]["attention"]["replicas"] = 2;
  object["spec"]["attention"]["gpuSelector"] = {{"minComputeCapability", "9.0"}};  // no Hopper here
  job = ParseJob(object);
  request.spec = &job.spec;
  EXPECT_THROW(TierPolicy().Place(request), PlacementError);
}

TEST(Placement, PlanJsonRoundTrips) {
  HeterMoEJob job = fixtures::TinyJob();
  PlacementDecision d = TinyPlacement(job);
  PlacementDecision back = PlacementFromPlanJson(PlanJson(d, "tiny", 0));
  EXPECT_EQ(back.attention.replicas, d.attention.replicas);
  EXPECT_EQ(back.expert.gpu_products, d.expert.gpu_products);
  EXPECT_EQ(back.engine, d.engine);
  EXPECT_EQ(back.zp_groups, d.zp_groups);
  EXPECT_EQ(back.asym_ea, d.asym_ea);
  EXPECT_EQ(back.summary, d.summary);
}

TEST(RunFile, FromTrainingAndPlan) {
  HeterMoEJob job = fixtures::TinyJob();
  std::string yaml = RunFileYaml(job, TinyPlacement(job));
  EXPECT_NE(yaml.find("steps: 100"), std::string::npos);
  EXPECT_NE(yaml.find("micro_batches: 2"), std::string::npos);
  EXPECT_NE(yaml.find("dir: \"/checkpoints/team-a/tiny\""), std::string::npos) << "one folder per job";
  EXPECT_NE(yaml.find("checkpoint_every: 50"), std::string::npos);
  EXPECT_NE(yaml.find("launch: env"), std::string::npos);
  EXPECT_NE(yaml.find("attention_ranks: 2"), std::string::npos);
  EXPECT_NE(yaml.find("expert_ranks: 4"), std::string::npos);
  EXPECT_NE(yaml.find("schedule: zebra"), std::string::npos);
  EXPECT_NE(yaml.find("timeout_seconds: 600"), std::string::npos);
  EXPECT_EQ(yaml.find("init:"), std::string::npos);
  EXPECT_EQ(OutputDir(fixtures::TinyJob("other")), "/checkpoints/team-a/other");
}

TEST(Placement, DefaultPlacementPlansAutoRolesOverGpuKinds) {
  json object = fixtures::TinyJobJson();
  object["spec"]["attention"]["replicas"] = "auto";
  object["spec"]["expert"]["replicas"] = "auto";
  HeterMoEJob job = ParseJob(object);
  PlacementRequest request{&job.spec, io::ParseMixtralConfigText(fixtures::kTinyModel, "t"), fixtures::A40V100Nodes()};
  auto placement = MakeDefaultPolicy();
  PlacementDecision d = placement->Place(request);
  EXPECT_GT(d.attention.replicas, 0);
  EXPECT_GT(d.expert.replicas, 0);
  EXPECT_LE(d.attention.replicas + d.expert.replicas, 16) << "one rank per GPU at most";
  FinishEnginePlan(job.spec, request.model, d);
  EXPECT_EQ(d.attention.replicas % d.zp_groups, 0);
  EXPECT_EQ(d.expert.replicas % d.zp_groups, 0);
  EXPECT_EQ(static_cast<int64_t>(d.engine["ranks"].size()), d.attention.replicas + d.expert.replicas);
  for (const RolePlacement* role : {&d.attention, &d.expert})
    for (const std::string& product : role->gpu_products)
      EXPECT_TRUE(product == "NVIDIA-A40" || product == "Tesla-V100-SXM2-32GB") << product;
  EXPECT_FALSE(d.summary.empty());

  // Explicit replicas keep the user's numbers (tier rule).
  HeterMoEJob fixed = fixtures::TinyJob();
  request.spec = &fixed.spec;
  d = placement->Place(request);
  EXPECT_EQ(d.attention.replicas, 2);
  EXPECT_EQ(d.expert.replicas, 4);
}

TEST(Placement, NodeNicLabelReachesThePlanner) {
  json object = fixtures::TinyJobJson();
  object["spec"]["attention"]["replicas"] = "auto";
  object["spec"]["expert"]["replicas"] = "auto";
  object["spec"]["training"]["seqLen"] = 1024;
  HeterMoEJob job = ParseJob(object);
  auto placement = MakeDefaultPolicy();
  auto predicted_step = [&](const std::string& nic) {
    // One GPU per node: every group's dispatch crosses NICs.
    std::vector<InventoryNode> nodes;
    for (int i = 0; i < 4; ++i) {
      nodes.push_back(ReadInventoryNode(fixtures::GpuNodeJson("a40-" + std::to_string(i), "NVIDIA-A40", 8, 6, 1), {}));
      nodes.push_back(
          ReadInventoryNode(fixtures::GpuNodeJson("v100-" + std::to_string(i), "Tesla-V100-SXM2-32GB", 7, 0, 1), {}));
    }
    for (InventoryNode& n : nodes)
      if (!nic.empty()) n.labels[kLabelNicGbps] = nic;
    PlacementRequest request{&job.spec, io::ParseMixtralConfigText(fixtures::kTinyModel, "t"), nodes};
    const PlacementDecision d = placement->Place(request);
    EXPECT_EQ(d.summary.rfind("planner: ", 0), 0u) << d.summary;
    return std::make_pair(d.planner_detail["predicted"]["step_seconds"].get<double>(), d.summary);
  };
  const auto [default_step, default_summary] = predicted_step("");
  const auto [slow_step, slow_summary] = predicted_step("0.01");  // 10 Mbit/s per node
  EXPECT_GT(slow_step, default_step) << "the planner saw the slower NIC";
  const auto [bad_step, bad_summary] = predicted_step("fast");
  EXPECT_DOUBLE_EQ(bad_step, default_step);
  EXPECT_NE(bad_summary.find("hetermoe.io/nic-gbps 'fast' is not a bandwidth"), std::string::npos) << bad_summary;
}

}  // namespace
}  // namespace hetermoe::op
