// hetermoe-plan at its edge: the issue's command line works, and bad input
// ends with one line "hetermoe-plan: error: ..." and exit status 1.
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

namespace {

struct PlanRun {
  int status;
  std::string out;
  std::string err;
};

std::string Data(const char* name) { return std::string(HETERMOE_PLANNER_TEST_DATA) + "/" + name; }

PlanRun Plan(const std::string& args) {
  const std::string err_path = ::testing::TempDir() + "hetermoe_plan_stderr_" + std::to_string(::getpid());
  const std::string command = std::string(HETERMOE_PLAN_BINARY) + " " + args + " 2>" + err_path;
  PlanRun run;
  FILE* pipe = ::popen(command.c_str(), "r");
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) run.out.append(buffer.data(), n);
  const int status = ::pclose(pipe);
  run.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream err(err_path);
  run.err.assign(std::istreambuf_iterator<char>(err), {});
  std::filesystem::remove(err_path);
  return run;
}

std::string Write(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + name + "_" + std::to_string(::getpid());
  std::ofstream(path) << text;
  return path;
}

void ExpectOneLineError(const PlanRun& run, const std::string& contains) {
  EXPECT_EQ(run.status, 1) << run.err;
  EXPECT_EQ(run.err.rfind("hetermoe-plan: error: ", 0), 0u) << run.err;
  EXPECT_EQ(run.err.find('\n'), run.err.size() - 1) << run.err;
  EXPECT_NE(run.err.find(contains), std::string::npos) << run.err;
  EXPECT_TRUE(run.out.empty()) << run.out;
}

TEST(Cli, TheIssuesCommandLinePrintsThePlanFile) {
  const PlanRun run = Plan("--inventory " + Data("cluster_6a40_6v100.yaml") + " --model " + Data("w1_config.json") +
                       " --seq-len 16384 --global-batch 24 --json");
  ASSERT_EQ(run.status, 0) << run.err;
  const nlohmann::json j = nlohmann::json::parse(run.out);
  EXPECT_GT(j["predicted"]["tokens_per_second"].get<double>(), 0);
  EXPECT_EQ(j["baselines"].size(), 4u);
}

TEST(Cli, WithoutJsonPrintsTheTable) {
  const PlanRun run = Plan("--inventory " + Data("cluster_4a40_8v100.yaml") + " --model " + Data("d1_config.json") +
                       " --seq-len 8192 --global-batch 24");
  ASSERT_EQ(run.status, 0) << run.err;
  EXPECT_NE(run.out.find("HeterMoE plan for"), std::string::npos);
}

TEST(Cli, ExplainListsTheBestShapesAndWhyOthersDidNotFit) {
  const std::string args = "--inventory " + Data("cluster_6a40_6v100.yaml") + " --model " + Data("d1_config.json") +
                           " --seq-len 16384 --global-batch 24 --no-baselines";
  const PlanRun run = Plan(args + " --explain");
  ASSERT_EQ(run.status, 0) << run.err;
  const size_t search = run.out.find("search: ");
  ASSERT_NE(search, std::string::npos) << run.out;
  EXPECT_NE(run.out.find("group shapes enumerated"), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("memory per attention / expert rank"), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("GiB of"), std::string::npos) << run.out;
  // The plan's row is marked, and at least the runner-up follows it.
  const size_t plan_row = run.out.find("\n*  ", search);
  ASSERT_NE(plan_row, std::string::npos) << run.out;
  EXPECT_NE(run.out.find(" x (", plan_row + 4), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("did not fit"), std::string::npos) << run.out;

  // --exhaustive prices every shape and lands on the same plan.
  const PlanRun fast = Plan(args + " --json");
  const PlanRun all = Plan(args + " --json --exhaustive");
  ASSERT_EQ(all.status, 0) << all.err;
  EXPECT_EQ(nlohmann::json::parse(fast.out)["predicted"], nlohmann::json::parse(all.out)["predicted"]);
}

TEST(Cli, BadInputEndsWithOneErrorLine) {
  const std::string model = " --model " + Data("w1_config.json");
  const std::string inventory = " --inventory " + Data("cluster_6a40_6v100.yaml");
  const std::string k80 = Write("k80.yaml", "nodes:\n  - {name: old-0, gpu: K80, count: 8}\n");
  ExpectOneLineError(Plan("--inventory " + k80 + model + " --seq-len 4096 --global-batch 8"),
                     k80 + ": nodes[0] (old-0): unknown GPU kind 'K80'");
  const std::string dup = Write("dup.yaml", "nodes:\n  - {name: n, gpu: A40, count: 2}\n  - {name: n, gpu: V100, count: 2}\n");
  ExpectOneLineError(Plan("--inventory " + dup + model + " --seq-len 4096 --global-batch 8"), "listed twice");
  ExpectOneLineError(Plan(inventory + model + " --seq-len 32768 --global-batch 240"), "does not fit");
  ExpectOneLineError(Plan(inventory + model + " --seq-len 4096 --global-batch 8 --gpu-budget 1"), "gpu-budget 1");
  ExpectOneLineError(Plan(inventory + " --model /nonexistent/config.json --seq-len 4096 --global-batch 8"),
                     "/nonexistent/config.json");
  const std::string profiles = Write("bad_profiles.yaml", "gpus:\n  - {kind: A40, gemm_efficiency: 2}\n");
  ExpectOneLineError(Plan(inventory + model + " --seq-len 4096 --global-batch 8 --profiles " + profiles),
                     "gemm_efficiency: must be a fraction of peak");
  ExpectOneLineError(Plan(inventory + model + " --global-batch 8"), "--seq-len");
  std::filesystem::remove(k80);
  std::filesystem::remove(dup);
  std::filesystem::remove(profiles);
}

TEST(Cli, SimulatePrintsEachStepsTime) {
  const std::string steps = Write("steps.json", R"([
    {"schedule": "sequential", "label": "a", "layers": 1, "micro_batches": 2,
     "attention": {"forward": 1, "backward": 2}, "expert_rank": {"forward": 1, "backward": 2},
     "dispatch": 0.5, "combine": 0.5},
    {"schedule": "ep", "label": "b", "layers": 1, "micro_batches": 1,
     "ranks": [{"attention": {"forward": 1, "backward": 2}, "experts": {"forward": 1, "backward": 2}}],
     "all_to_all": 0}])");
  const PlanRun run = Plan("simulate " + steps);
  ASSERT_EQ(run.status, 0) << run.err;
  const nlohmann::json j = nlohmann::json::parse(run.out);
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["label"], "a");
  EXPECT_DOUBLE_EQ(j[0]["step_seconds"].get<double>(), 2 * (1 + 0.5 + 1 + 0.5 + 0.5 + 2 + 0.5 + 2));
  EXPECT_DOUBLE_EQ(j[0]["busy"]["expert"].get<double>(), 2 * 3.0);
  EXPECT_EQ(j[1]["schedule"], "ep");
  EXPECT_DOUBLE_EQ(j[1]["step_seconds"].get<double>(), 6.0);

  const std::string bad = Write("bad_steps.json", R"({"schedule": "zebra", "layers": 1})");
  ExpectOneLineError(Plan("simulate " + bad), bad + ": micro_batches: missing");
  ExpectOneLineError(Plan("simulate /nonexistent/steps.json"), "/nonexistent/steps.json: cannot read");
  std::filesystem::remove(steps);
  std::filesystem::remove(bad);
}

}  // namespace
