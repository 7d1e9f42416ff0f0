// hetermoe-plan: the planner's edge. Reads the inventory, the model config
// and optional profiles, plans, and prints the plan as a table or as the
// JSON plan file. Every hetermoe::Error becomes one line on stderr,
// "hetermoe-plan: error: ...", and exit status 1.
//
//   hetermoe-plan --inventory cluster.yaml --model config.json
//                 --seq-len 16384 --global-batch 32 [--profiles p.yaml] [--json]
//                 [--gpu-budget N] [--no-asym-ea] [--max-micro-batches R]
//                 [--no-baselines] [--timeline] [--output plan.json]
#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include "trainer/io/mixtral_config.h"
#include "trainer/planner/gpu_profiles.h"
#include "trainer/planner/inventory.h"
#include "trainer/planner/plan_json.h"
#include "trainer/planner/plan_table.h"
#include "trainer/planner/planner.h"
#include "trainer/planner/profiles_yaml.h"
#include "trainer/util/error.h"

namespace {

namespace planner = hetermoe::planner;

struct Options {
  std::string inventory, model, profiles, output;
  int64_t seq_len = 0, global_batch = 0;
  int gpu_budget = 0, max_micro_batches = 64;
  bool json = false, no_asym_ea = false, no_baselines = false, timeline = false;
};

int Run(const Options& o) {
  planner::GpuProfileTable profiles = planner::GpuProfileTable::Builtin();
  if (!o.profiles.empty()) planner::LoadProfiles(o.profiles, profiles);

  planner::PlanRequest request;
  request.inventory = planner::LoadInventory(o.inventory, profiles);
  request.model = planner::ModelShape::FromMixtral(hetermoe::io::LoadMixtralConfig(o.model), o.model);
  request.seq_len = o.seq_len;
  request.global_batch = o.global_batch;
  request.gpu_budget = o.gpu_budget;
  request.asym_ea = !o.no_asym_ea;
  request.max_micro_batches = o.max_micro_batches;
  request.baselines = !o.no_baselines;
  const planner::Plan plan = planner::MakePlan(request, profiles);

  const std::string text = o.json || !o.output.empty() ? planner::PlanToJson(plan, o.timeline).dump(2) + "\n"
                                                        : planner::PlanTable(plan);
  if (!o.output.empty()) {
    std::ofstream out(o.output);
    if (!out || !(out << text) || !out.flush()) throw hetermoe::Error(o.output + ": cannot write the plan");
    if (!o.json) std::cout << planner::PlanTable(plan);
  } else {
    std::cout << text;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"hetermoe-plan: choose ZP groups, micro-batches and Asym-EA for a heterogeneous cluster"};
  app.set_version_flag("--version", "hetermoe-plan 0.1.0");
  Options o;
  app.add_option("--inventory", o.inventory, "Cluster inventory (YAML: nodes with gpu and count)")->required();
  app.add_option("--model", o.model, "Model config (Hugging Face config.json, Mixtral)")->required();
  app.add_option("--seq-len", o.seq_len, "Tokens per sequence")->required();
  app.add_option("--global-batch", o.global_batch, "Sequences per training step")->required();
  app.add_option("--profiles", o.profiles, "GPU profiles YAML overriding the built-in table");
  app.add_option("--gpu-budget", o.gpu_budget, "Use at most this many GPUs (0 = all)");
  app.add_option("--max-micro-batches", o.max_micro_batches, "Upper bound on the micro-batch count R");
  app.add_flag("--json", o.json, "Print the plan file (JSON) instead of the table");
  app.add_flag("--no-asym-ea", o.no_asym_ea, "Do not move experts onto attention ranks");
  app.add_flag("--no-baselines", o.no_baselines, "Skip the EP, DistEP, EP-Ideal and PP predictions");
  app.add_flag("--timeline", o.timeline, "Include the simulated per-rank timeline in the JSON");
  app.add_option("--output,-o", o.output, "Also write the JSON plan to this file");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "hetermoe-plan: error: %s\n", e.what());
    return 1;
  }
  try {
    return Run(o);
  } catch (const hetermoe::Error& e) {
    std::fprintf(stderr, "hetermoe-plan: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hetermoe-plan: internal error: %s\n", e.what());
    return 3;
  }
}
