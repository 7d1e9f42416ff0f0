// Spec validation: each CRD cross-field rule (and the model check CEL cannot
// do) rejects a bad spec with a message naming the field; a good spec passes.
#include "common/error.h"
#include "operator/core/validation.h"

#include <gtest/gtest.h>

#include "test_jobs.h"

namespace hetermoe::op {
namespace {

using nlohmann::json;

struct Case {
  std::string name;
  std::function<void(json& spec)> edit;
  std::string expect;  // substring of one error; "" = valid
};

class Validate : public ::testing::TestWithParam<Case> {};

TEST_P(Validate, Spec) {
  const Case& c = GetParam();
  json object = fixtures::TinyJobJson();
  c.edit(object["spec"]);
  JobSpec spec = ParseJobSpec(object["spec"]);
  std::string model = spec.model.config.value_or(fixtures::kTinyModel);
  auto errors = ValidateSpec(spec, &model);
  if (c.expect.empty()) {
    EXPECT_TRUE(errors.empty()) << errors.front();
    return;
  }
  bool found = false;
  for (const auto& e : errors) found |= e.find(c.expect) != std::string::npos;
  EXPECT_TRUE(found) << "wanted \"" << c.expect << "\", got " << (errors.empty() ? "no error" : errors.front());
}

INSTANTIATE_TEST_SUITE_P(
    Rules, Validate,
    ::testing::Values(
        Case{"Good", [](json&) {}, ""},
        Case{"AutoReplicas", [](json& s) { s["attention"]["replicas"] = "auto"; }, ""},
        Case{"CpuRoles", [](json& s) {
               s["attention"]["gpusPerReplica"] = 0;
               s["expert"]["gpusPerReplica"] = 0;
             }, ""},
        Case{"ZeroReplicas", [](json& s) { s["attention"]["replicas"] = 0; }, "spec.attention.replicas"},
        Case{"AutoOnCpu", [](json& s) {
               s["expert"]["replicas"] = "auto";
               s["expert"]["gpusPerReplica"] = 0;
             }, "\"auto\" needs gpusPerReplica > 0"},
        Case{"SelectorOnCpu", [](json& s) {
               s["expert"]["gpusPerReplica"] = 0;
               s["expert"]["gpuSelector"] = {{"families", {"volta"}}};
             }, "gpuSelector: needs gpusPerReplica > 0"},
        Case{"SelectorMinAboveMax", [](json& s) {
               s["attention"]["gpuSelector"] = {{"minComputeCapability", "9.0"}, {"maxComputeCapability", "8.0"}};
             }, "must not exceed maxComputeCapability"},
        Case{"SelectorBadCapability", [](json& s) { s["attention"]["gpuSelector"] = {{"minComputeCapability", "eight"}}; },
             "minComputeCapability"},
        Case{"SelectorBadFamily", [](json& s) { s["attention"]["gpuSelector"] = {{"families", {"kepler"}}}; },
             "unknown family"},
        Case{"RestartPolicy", [](json& s) { s["attention"]["restartPolicy"] = "Sometimes"; }, "restartPolicy"},
        Case{"BothModelSources", [](json& s) { s["model"]["configMap"] = {{"name", "m"}}; },
             "exactly one of model.config and model.configMap"},
        Case{"NoModelSource", [](json& s) { s["model"] = json::object(); }, "exactly one of"},
        Case{"ModelNotMixtral", [](json& s) { s["model"]["config"] = "{\"hidden_size\": -1}"; }, "spec.model.config"},
        Case{"ModelNotJson", [](json& s) { s["model"]["config"] = "not json"; }, "spec.model.config"},
        Case{"MoreExpertRanksThanExperts", [](json& s) { s["expert"]["replicas"] = 9; }, "experts per layer"},
        Case{"MicroBatchesDivide", [](json& s) { s["training"]["microBatches"] = 3; }, "microBatches must divide"},
        Case{"Warmup", [](json& s) { s["training"]["warmupSteps"] = 101; }, "warmupSteps"},
        Case{"MinLr", [](json& s) { s["training"]["minLr"] = 1.0; }, "minLr"},
        Case{"SeqLenBeyondModel", [](json& s) { s["training"]["seqLen"] = 4096; }, "max_position_embeddings"},
        Case{"Evaluation", [](json& s) {
               s["training"]["validData"] = "/data/valid.bin";
               s["training"]["evalEvery"] = 10;
               s["training"]["evalBatches"] = 2;
               s["training"]["tokenizer"] = "/data/tokenizer.model";
             }, ""},
        Case{"EvaluationWithoutData", [](json& s) { s["training"]["evalEvery"] = 10; }, "evalEvery: needs validData"},
        Case{"EvaluationBatches", [](json& s) { s["training"]["evalBatches"] = 0; }, "evalBatches: must be >= 1"},
        Case{"SlidingWindowShorterThanTheSequence", [](json& s) {
               json model = json::parse(s["model"]["config"].get<std::string>());
               model["sliding_window"] = 64;
               s["model"]["config"] = model.dump();
             }, ""},
        Case{"SlidingWindowNegative", [](json& s) {
               json model = json::parse(s["model"]["config"].get<std::string>());
               model["sliding_window"] = -1;
               s["model"]["config"] = model.dump();
             }, "sliding_window"},
        Case{"SlidingWindowAsLongAsTheSequence", [](json& s) {
               json model = json::parse(s["model"]["config"].get<std::string>());
               model["sliding_window"] = 128;
               s["model"]["config"] = model.dump();
             }, ""},
        Case{"OneGpuPerPod", [](json& s) { s["expert"]["gpusPerReplica"] = 2; }, "must be 0 or 1"},
        Case{"Schedule", [](json& s) { s["parallel"] = {{"schedule", "pipeline"}}; }, "zebra, sequential or ep"},
        Case{"Timeout", [](json& s) { s["parallel"] = {{"timeoutSeconds", 0}}; }, "timeoutSeconds"},
        Case{"CheckpointWithoutClaim", [](json& s) { s["checkpoint"] = {{"intervalSteps", 10}}; },
             "intervalSteps needs claimName"},
        Case{"CleanPodPolicy", [](json& s) { s["runPolicy"]["cleanPodPolicy"] = "Some"; }, "cleanPodPolicy"},
        Case{"QueueNeedsScheduler", [](json& s) { s["runPolicy"]["schedulingPolicy"] = {{"queue", "q"}}; },
             "queue needs scheduler"},
        Case{"Volcano", [](json& s) {
               s["runPolicy"]["schedulingPolicy"] = {{"queue", "q"}, {"scheduler", "volcano"}, {"minAvailable", 6}};
             }, ""}),
    [](const auto& info) { return info.param.name; });

TEST(ParseJob, TypeErrorsNameTheField) {
  json object = fixtures::TinyJobJson();
  object["spec"]["training"]["steps"] = "many";
  try {
    ParseJob(object);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("spec.training.steps: expected an integer"), std::string::npos) << e.what();
  }
}

TEST(ParseJob, UnknownFieldIsAnError) {
  json object = fixtures::TinyJobJson();
  object["spec"]["training"]["stepz"] = 3;
  EXPECT_THROW(ParseJob(object), Error);
}

TEST(ParseJob, ReplicasAutoOrInteger) {
  json object = fixtures::TinyJobJson();
  object["spec"]["attention"]["replicas"] = "auto";
  EXPECT_FALSE(ParseJob(object).spec.attention.replicas.has_value());
  object["spec"]["attention"]["replicas"] = "three";
  EXPECT_THROW(ParseJob(object), Error);
}

TEST(ParseJob, StatusRoundTrips) {
  JobStatus s;
  s.state = "Running";
  s.conditions.push_back({"Created", "True", "PodsCreated", "6 pods", "2025-05-20T10:00:00Z"});
  s.attention = {2, 0, 0};
  s.expert = {3, 1, 0};
  s.start_time = "2025-05-20T10:00:00Z";
  s.restarts = 1;
  s.observed_generation = 3;
  s.plan = PlanSummary{2, 4, 6, "NVIDIA-A40", "Tesla-V100-SXM2-32GB", "tiny-plan", "tier rule"};
  s.progress = Progress{10, 100, 10.0, 90.0, 1234.5, 2.5, "2025-05-20T10:01:00Z", 2.75};
  EXPECT_EQ(ParseJobStatus(StatusToJson(s)), s);
}

}  // namespace
}  // namespace hetermoe::op
