// The simulator's JSON edge (`hetermoe-plan simulate`): steps described by
// per-op times become the same task graphs the planner simulates, transfers
// in bytes are priced by the alpha-beta link, and bad input names its path.
#include "planner/step_json.h"

#include <gtest/gtest.h>

#include "common/error.h"

namespace hetermoe::planner {
namespace {

using nlohmann::json;

json ZebraJson() {
  return json::parse(R"({
    "schedule": "zebra", "label": "two layers", "layers": 2, "micro_batches": 3,
    "attention": {"forward": 3, "backward": 6}, "head": 1,
    "expert_rank": [{"forward": 4, "backward": 8}, {"forward": 2, "backward": 4}],
    "offloaded_experts": {"forward": 0.5, "backward": 1},
    "dispatch": 0.25, "combine": [0.25, 0.5],
    "attention_optimizer": 2, "expert_optimizer": 1
  })");
}

ZebraStepSpec ZebraSpec() {
  ZebraStepSpec spec;
  spec.layers = 2;
  spec.micro_batches = 3;
  spec.attention = {3, 6};
  spec.head = 1;
  spec.expert_rank = {{4, 8}, {2, 4}};
  spec.offloaded_experts = {{0.5, 1}, {0.5, 1}};
  spec.dispatch = {0.25, 0.25};
  spec.combine = {0.25, 0.5};
  spec.attention_optimizer = 2;
  spec.expert_optimizer = 1;
  return spec;
}

std::string ErrorOf(const json& j) {
  try {
    StepRequestFromJson(j, "steps.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(StepJson, ZebraAndSequentialAreTheSchedulesGraphs) {
  const StepRequest zebra = StepRequestFromJson(ZebraJson(), "steps.json");
  EXPECT_EQ(zebra.label, "two layers");
  EXPECT_DOUBLE_EQ(Simulate(BuildStep(zebra)).step_seconds, Simulate(BuildZebraStep(ZebraSpec())).step_seconds);

  json j = ZebraJson();
  j["schedule"] = "sequential";
  const StepRequest sequential = StepRequestFromJson(j, "steps.json");
  EXPECT_DOUBLE_EQ(Simulate(BuildStep(sequential)).step_seconds,
                   Simulate(BuildSequentialStep(ZebraSpec())).step_seconds);
}

TEST(StepJson, SimulationResultNamesEveryResource) {
  const StepRequest request = StepRequestFromJson(ZebraJson(), "steps.json");
  const SimulationResult sim = Simulate(BuildStep(request), true);
  const json out = SimulationToJson(request, sim, true);
  EXPECT_EQ(out["schedule"], "zebra");
  EXPECT_DOUBLE_EQ(out["step_seconds"].get<double>(), sim.step_seconds);
  // 2 layers x 3 micro-batches x (3 + 6) of attention, 3 heads, 12 offloaded
  // expert ops of 0.5 / 1, and the optimizer.
  EXPECT_DOUBLE_EQ(out["busy"]["attention"].get<double>(), 2 * 3 * 9 + 3 * 1 + 2 * 3 * 1.5 + 2);
  EXPECT_EQ(out["timeline"].size(), sim.resources.size());
}

TEST(StepJson, TransfersInBytesUseTheAlphaBetaLink) {
  json j = ZebraJson();
  j["link"] = {{"latency_seconds", 0.01}, {"bytes_per_second", 1e9}};
  j["dispatch"] = {{"bytes", 5e8}, {"peers", 2}};
  j["combine"] = json::array({json{{"bytes", 1e9}}, 0.5});
  const StepRequest request = StepRequestFromJson(j, "steps.json");
  EXPECT_DOUBLE_EQ(request.zebra.dispatch[0], 2 * 0.01 + 0.5);
  EXPECT_DOUBLE_EQ(request.zebra.dispatch[1], 2 * 0.01 + 0.5);
  EXPECT_DOUBLE_EQ(request.zebra.combine[0], 0.01 + 1.0);
  EXPECT_DOUBLE_EQ(request.zebra.combine[1], 0.5);
}

TEST(StepJson, EpRanksAndAllToAll) {
  const json j = json::parse(R"({
    "schedule": "ep", "layers": 3, "micro_batches": 2,
    "link": {"latency_seconds": 0.1, "bytes_per_second": 100},
    "ranks": [{"kind": "fast", "attention": {"forward": 1, "backward": 2}, "experts": {"forward": 1, "backward": 2}},
              {"kind": "slow", "attention": {"forward": 4, "backward": 8}, "experts": {"forward": 1, "backward": 2},
               "head": 1, "optimizer": 3}],
    "all_to_all": {"bytes": 40}
  })");
  const StepRequest request = StepRequestFromJson(j, "steps.json");
  ASSERT_EQ(request.ep.ranks.size(), 2u);
  EXPECT_DOUBLE_EQ(request.ep.all_to_all, 0.5);
  // The slow rank sets every layer's pace: per micro-batch and layer 4 + 1
  // forward, 2 + 8 backward, four all-to-alls; a head per micro-batch; then
  // its optimizer.
  EXPECT_DOUBLE_EQ(Simulate(BuildStep(request)).step_seconds, 2 * (3 * (5 + 10 + 4 * 0.5) + 1) + 3);

  // Experts by layer (uneven routing): a list of L.
  json by_layer = j;
  by_layer["ranks"][0]["experts"] = json::array({j["ranks"][0]["experts"], j["ranks"][0]["experts"],
                                                 json{{"forward", 9}, {"backward", 0}}});
  const StepRequest uneven = StepRequestFromJson(by_layer, "steps.json");
  ASSERT_EQ(uneven.ep.ranks[0].experts_by_layer.size(), 3u);
  EXPECT_DOUBLE_EQ(uneven.ep.ranks[0].experts_by_layer[2].forward, 9);
  EXPECT_DOUBLE_EQ(Simulate(BuildStep(uneven)).step_seconds, 2 * (3 * (5 + 10 + 4 * 0.5) + 1 + 8) + 3);
  by_layer["ranks"][0]["experts"].erase(2);
  EXPECT_EQ(ErrorOf(by_layer), "steps.json: ranks[0].experts: expected 3 entries (one per layer), got 2");
}

TEST(StepJson, BadInputNamesThePath) {
  json j = ZebraJson();
  j["expert_rank"][1].erase("backward");
  EXPECT_EQ(ErrorOf(j), "steps.json: expert_rank[1].backward: missing");
  j = ZebraJson();
  j["atention"] = 1;
  EXPECT_EQ(ErrorOf(j), "steps.json: atention: unknown key");
  j = ZebraJson();
  j["combine"] = {0.1, 0.2, 0.3};
  EXPECT_EQ(ErrorOf(j), "steps.json: combine: expected 2 entries (one per layer), got 3");
  j = ZebraJson();
  j["dispatch"] = {{"bytes", 10}};
  EXPECT_NE(ErrorOf(j).find("steps.json: dispatch: a transfer in bytes needs the step's `link`"), std::string::npos);
  j = ZebraJson();
  j["head"] = -1;
  EXPECT_EQ(ErrorOf(j), "steps.json: head: must be >= 0");
  j = ZebraJson();
  j["schedule"] = "pipeline";
  EXPECT_EQ(ErrorOf(j), "steps.json: schedule: expected zebra, sequential or ep, got 'pipeline'");
  j = ZebraJson();
  j["micro_batches"] = 0;
  EXPECT_EQ(ErrorOf(j), "steps.json: micro_batches: expected a positive integer");
  EXPECT_EQ(ErrorOf(json::array()), "steps.json: expected an object");
}

}  // namespace
}  // namespace hetermoe::planner
