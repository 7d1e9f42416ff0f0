// hetermoe-plan: the planner's edge. Reads the inventory, the model config
// and optional profiles, plans, and prints the plan as a table or as the
// JSON plan file. Every hetermoe::Error becomes one line on stderr,
// "hetermoe-plan: error: ...", and exit status 1.
//
//   hetermoe-plan --inventory cluster.yaml --model config.json
//                 --seq-len 16384 --global-batch 32 [--profiles p.yaml] [--json]
//                 [--gpu-budget N] [--no-asym-ea] [--max-micro-batches R]
//                 [--no-baselines] [--timeline] [--output plan.json]
//                 [--explain] [--exhaustive]
//   hetermoe-plan simulate steps.json [--timeline]
//   hetermoe-plan dedup [--experts 512] [--groups 4,8,16,32] [--top-k 2,4,6,8]
//                 [--tokens 100000] [--json]
//   hetermoe-plan swap metrics.jsonl --top-k 2 --expert-ranks 3 [--swap-every 1] [--json]
//
// `simulate` runs the step simulator alone on steps described by per-op
// times (step_json.h): one JSON object or a list of them in, a JSON list of
// {label, schedule, step_seconds, busy} out. bench/validate_simulator.py
// feeds it the op times measured in traces of the distributed engine.
//
// `dedup` prints HierMoE's duplicate share (planner/dedup.h) for uniform
// top-k routing over R destination groups: the planner's formula and the
// share measured by routing --tokens tokens at random, per R and k.
//
// `swap` forecasts HierMoE's expert swap (planner/swap_forecast.h) over a
// run's logged routing counts (metrics.jsonl expert_tokens): per step, the
// expert ranks' routed-load imbalance and the busiest rank's deduplicated
// rows with the planned placement and with a swap every --swap-every steps.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/file_bytes.h"
#include "common/mixtral_config.h"
#include "planner/dedup.h"
#include "planner/gpu_profiles.h"
#include "planner/inventory.h"
#include "planner/links_json.h"
#include "planner/plan_json.h"
#include "planner/plan_table.h"
#include "planner/planner.h"
#include "planner/profiles_yaml.h"
#include "planner/step_json.h"
#include "planner/swap_forecast.h"

namespace {

namespace planner = hetermoe::planner;

struct Options {
  std::string inventory, model, profiles, output;
  int64_t seq_len = 0, global_batch = 0;
  int gpu_budget = 0, max_micro_batches = 64, groups = 0, in_flight = 0, zero = 0;
  std::string shape, recompute = "none", dedup_depth = "rank", links, routing;
  int swap_every = 0;
  bool json = false, no_asym_ea = false, no_dedup = false, no_baselines = false, timeline = false, explain = false,
       exhaustive = false;
};

// expert_tokens of every line of a run's metrics.jsonl, [step][layer][expert].
std::vector<std::vector<std::vector<int64_t>>> RoutingCounts(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw hetermoe::Error(path + ": cannot open");
  std::vector<std::vector<std::vector<int64_t>>> counts;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    const nlohmann::json m = nlohmann::json::parse(line, nullptr, false);
    if (m.is_discarded() || !m.is_object()) throw hetermoe::Error(path + ":" + std::to_string(n) + ": not JSON");
    if (!m.contains("expert_tokens")) continue;  // an evaluation line
    try {
      counts.push_back(m["expert_tokens"].get<std::vector<std::vector<int64_t>>>());
    } catch (const nlohmann::json::exception&) {
      throw hetermoe::Error(path + ":" + std::to_string(n) + ": expert_tokens is not a list of lists of counts");
    }
  }
  if (counts.empty()) throw hetermoe::Error(path + ": no step has expert_tokens");
  return counts;
}

struct SimulateOptions {
  std::string steps;
  bool timeline = false;
};

int Simulate(const SimulateOptions& o) {
  std::ifstream in(o.steps);
  if (!in) throw hetermoe::Error(o.steps + ": cannot read");
  const nlohmann::json doc = nlohmann::json::parse(in, nullptr, false);
  if (doc.is_discarded()) throw hetermoe::Error(o.steps + ": not valid JSON");
  nlohmann::json out = nlohmann::json::array();
  auto one = [&](const nlohmann::json& step, const std::string& where) {
    const planner::StepRequest request = planner::StepRequestFromJson(step, o.steps, where);
    out.push_back(planner::SimulationToJson(request, planner::Simulate(planner::BuildStep(request), o.timeline),
                                            o.timeline));
  };
  if (doc.is_array()) {
    for (size_t i = 0; i < doc.size(); ++i) one(doc[i], "[" + std::to_string(i) + "]");
  } else {
    one(doc, "");
  }
  std::cout << out.dump(2) << "\n";
  return 0;
}

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
  request.dedup = !o.no_dedup;
  request.dedup_depth = o.dedup_depth;
  if (!o.links.empty()) request.links = planner::LinksFromJson(hetermoe::io::ReadFileBytes(o.links), o.links);
  if (!o.routing.empty()) request.routing = RoutingCounts(o.routing).back();
  request.swap_every = o.swap_every;
  request.max_micro_batches = o.max_micro_batches;
  request.micro_batches_in_flight = o.in_flight;
  request.zero = o.zero == 1;
  request.recompute = o.recompute;
  request.baselines = !o.no_baselines;
  request.groups = o.groups;
  if (!o.shape.empty()) {
    int m = 0, n = 0;
    char extra = 0;
    if (std::sscanf(o.shape.c_str(), "%d:%d%c", &m, &n, &extra) != 2 || m < 1 || n < 1)
      throw hetermoe::Error("--shape " + o.shape + ": expected M:N, attention and expert ranks per group (e.g. 1:3)");
    request.attention_ranks = m;
    request.expert_ranks = n;
  }
  const planner::Plan plan = planner::MakePlan(
      request, profiles, o.exhaustive ? planner::SearchMode::kExhaustive : planner::SearchMode::kBranchAndBound);

  const std::string text = o.json || !o.output.empty() ? planner::PlanToJson(plan, o.timeline).dump(2) + "\n"
                                                        : planner::PlanTable(plan);
  if (!o.output.empty()) {
    std::ofstream out(o.output);
    if (!out || !(out << text) || !out.flush()) throw hetermoe::Error(o.output + ": cannot write the plan");
    if (!o.json) std::cout << planner::PlanTable(plan);
  } else {
    std::cout << text;
  }
  if (o.explain) (o.json ? std::cerr : std::cout) << "\n" << planner::PlanExplanation(plan);
  return 0;
}

struct DedupOptions {
  int64_t experts = 512;
  std::vector<int64_t> groups = {4, 8, 16, 32};
  std::vector<int64_t> top_k = {2, 4, 6, 8};
  int64_t tokens = 100000;
  bool json = false;
};

int Dedup(const DedupOptions& o) {
  nlohmann::json rows = nlohmann::json::array();
  if (!o.json) {
    std::printf("duplicate share of top-k routing over R groups, E = %lld experts, uniform routing\n",
                static_cast<long long>(o.experts));
    std::printf("(formula: 1 - sum_g P(reach g) / k; measured: %lld tokens routed at random)\n\n",
                static_cast<long long>(o.tokens));
    std::printf("%6s %4s %10s %10s\n", "R", "k", "formula %", "measured %");
  }
  uint64_t seed = 1;
  for (int64_t r : o.groups)
    for (int64_t k : o.top_k) {
      const double formula = planner::DuplicateShare(o.experts, r, k);
      const double measured = planner::MeasureDuplicateShare(o.experts, r, k, o.tokens, seed++);
      if (o.json)
        rows.push_back({{"groups", r}, {"top_k", k}, {"formula", formula}, {"measured", measured}});
      else
        std::printf("%6lld %4lld %10.2f %10.2f\n", static_cast<long long>(r), static_cast<long long>(k),
                    100 * formula, 100 * measured);
    }
  if (o.json) std::cout << nlohmann::json{{"experts", o.experts}, {"tokens", o.tokens}, {"shares", rows}}.dump(2)
                        << "\n";
  return 0;
}

struct SwapOptions {
  std::string metrics;
  int64_t top_k = 0;
  int expert_ranks = 0, swap_every = 1;
  bool json = false;
};

int Swap(const SwapOptions& o) {
  const auto counts = RoutingCounts(o.metrics);
  const auto steps = planner::ForecastSwaps(counts, o.top_k, o.expert_ranks, o.swap_every);
  auto mean = [](const std::vector<planner::SwapForecastLayer>& layers) {
    double sum = 0;
    for (const auto& l : layers) sum += l.imbalance;
    return layers.empty() ? 0.0 : sum / static_cast<double>(layers.size());
  };
  auto busiest = [](const std::vector<planner::SwapForecastLayer>& layers) {
    int64_t sum = 0;
    for (const auto& l : layers) sum += l.busiest_dedup_rows;
    return sum;
  };
  if (o.json) {
    nlohmann::json rows = nlohmann::json::array();
    auto side = [](const std::vector<planner::SwapForecastLayer>& layers) {
      nlohmann::json imbalance = nlohmann::json::array(), rows_in = nlohmann::json::array();
      for (const auto& l : layers) {
        imbalance.push_back(l.imbalance);
        rows_in.push_back(l.busiest_dedup_rows);
      }
      return nlohmann::json{{"expert_load_imbalance", imbalance}, {"busiest_dedup_rows", rows_in}};
    };
    for (size_t s = 0; s < steps.size(); ++s)
      rows.push_back({{"step", s + 1}, {"planned", side(steps[s].planned)}, {"swapped", side(steps[s].swapped)},
                      {"swaps", steps[s].swaps}});
    std::cout << nlohmann::json{{"top_k", o.top_k}, {"expert_ranks", o.expert_ranks}, {"swap_every", o.swap_every},
                                {"steps", rows}}.dump(2)
              << "\n";
    return 0;
  }
  std::printf("expert swap forecast from %s: %d expert ranks, top-%lld, a swap per layer every %d steps\n",
              o.metrics.c_str(), o.expert_ranks, static_cast<long long>(o.top_k), o.swap_every);
  std::printf("%5s %22s %22s %6s\n", "step", "imbalance planned/swap", "busiest rows plan/swap", "swaps");
  for (size_t s = 0; s < steps.size(); ++s)
    std::printf("%5zu %10.3f / %-9.3f %10lld / %-9lld %6d\n", s + 1, mean(steps[s].planned), mean(steps[s].swapped),
                static_cast<long long>(busiest(steps[s].planned)), static_cast<long long>(busiest(steps[s].swapped)),
                steps[s].swaps);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"hetermoe-plan: choose ZP groups, micro-batches and Asym-EA for a heterogeneous cluster"};
  app.set_version_flag("--version", "hetermoe-plan 0.1.0");
  Options o;
  // Required unless the subcommand `simulate` is given (checked after parsing).
  const std::vector<CLI::Option*> plan_inputs = {
      app.add_option("--inventory", o.inventory, "Cluster inventory (YAML: nodes with gpu and count) (required)"),
      app.add_option("--model", o.model, "Model config (Hugging Face config.json, Mixtral) (required)"),
      app.add_option("--seq-len", o.seq_len, "Tokens per sequence (required)"),
      app.add_option("--global-batch", o.global_batch, "Sequences per training step (required)")};
  app.add_option("--profiles", o.profiles, "GPU profiles YAML overriding the built-in table");
  app.add_option("--gpu-budget", o.gpu_budget, "Use at most this many GPUs (0 = all)");
  app.add_option("--max-micro-batches", o.max_micro_batches, "Upper bound on the micro-batch count R");
  app.add_option("--in-flight", o.in_flight,
                 "parallel.micro_batches_in_flight the run will use: zebra in waves of this many (0 = all R)");
  app.add_option("--zero", o.zero, "train.zero the run will use: 1 shards the dense AdamW moments")
      ->check(CLI::IsMember({0, 1}));
  app.add_option("--recompute", o.recompute,
                 "train.recompute the run will use: activations recomputed in backward instead of kept")
      ->check(CLI::IsMember({"none", "attention", "experts", "full"}));
  app.add_flag("--json", o.json, "Print the plan file (JSON) instead of the table");
  app.add_flag("--no-asym-ea", o.no_asym_ea, "Do not move experts onto attention ranks");
  app.add_flag("--no-dedup", o.no_dedup,
               "parallel.dedup false: price the dispatch without HierMoE's token deduplication");
  app.add_option("--dedup-depth", o.dedup_depth,
                 "parallel.dedup's depth the run will use: rank, node (a token crosses to each expert machine once, "
                 "relayed inside it) or auto (node where that is faster)")
      ->check(CLI::IsMember({"rank", "node", "auto"}));
  app.add_option("--links", o.links,
                 "A run's links.json (parallel.dedup auto measures them): its fitted links price every transfer "
                 "instead of the GPU profiles' and the inventory's numbers")
      ->check(CLI::ExistingFile);
  app.add_option("--routing", o.routing,
                 "A run's metrics.jsonl: its last step's tokens per expert (expert_tokens) load the expert ranks "
                 "instead of uniform routing")
      ->check(CLI::ExistingFile);
  app.add_option("--swap-every", o.swap_every,
                 "parallel.swap_every the run will use: with --routing, the expert ranks carry the load the swaps "
                 "settle on")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--no-baselines", o.no_baselines, "Skip the EP, DistEP, EP-Ideal and PP predictions");
  app.add_flag("--timeline", o.timeline, "Include the simulated per-rank timeline in the JSON");
  app.add_option("--output,-o", o.output, "Also write the JSON plan to this file");
  app.add_flag("--explain", o.explain,
               "Also list the best group shapes with their predicted step and memory per rank, and why others "
               "did not fit (to stderr with --json)");
  app.add_option("--shape", o.shape, "Only ZP groups of M attention : N expert ranks (\"M:N\"), to price a chosen shape");
  app.add_option("--groups", o.groups, "Only this many ZP groups");
  app.add_flag("--exhaustive", o.exhaustive,
               "Price every group shape instead of pruning by lower bound (same plan, slower; for checking)");

  SimulateOptions so;
  CLI::App* simulate = app.add_subcommand(
      "simulate", "Simulate steps given by per-op times (JSON, see planner/step_json.h); print step times");
  simulate->add_option("steps", so.steps, "JSON file: one step or a list of steps")->required();
  simulate->add_flag("--timeline", so.timeline, "Include each resource's busy intervals");
  DedupOptions dedup_options;
  CLI::App* dedup = app.add_subcommand(
      "dedup", "Duplicate share of top-k routing over R groups (HierMoE's table): formula and measured");
  dedup->add_option("--experts", dedup_options.experts, "Experts E (divisible by every R)");
  dedup->add_option("--groups", dedup_options.groups, "Destination groups R (comma-separated)")->delimiter(',');
  dedup->add_option("--top-k", dedup_options.top_k, "Experts per token k (comma-separated)")->delimiter(',');
  dedup->add_option("--tokens", dedup_options.tokens, "Tokens routed at random for the measured share");
  dedup->add_flag("--json", dedup_options.json, "Print JSON");
  SwapOptions swap_options;
  CLI::App* swap = app.add_subcommand(
      "swap", "Forecast HierMoE's expert swap over a run's routing counts (metrics.jsonl): load imbalance and the "
              "busiest rank's rows, planned placement vs swapped");
  swap->add_option("metrics", swap_options.metrics, "A run's metrics.jsonl")->required()->check(CLI::ExistingFile);
  swap->add_option("--top-k", swap_options.top_k, "Experts per token k")->required()->check(CLI::PositiveNumber);
  swap->add_option("--expert-ranks", swap_options.expert_ranks, "Expert ranks N the experts are split over")
      ->required()
      ->check(CLI::PositiveNumber);
  swap->add_option("--swap-every", swap_options.swap_every, "parallel.swap_every (0 = never)")
      ->check(CLI::NonNegativeNumber);
  swap->add_flag("--json", swap_options.json, "Print JSON");
  app.require_subcommand(0, 1);

  try {
    app.parse(argc, argv);
    if (!simulate->parsed() && !dedup->parsed() && !swap->parsed()) {
      for (CLI::Option* input : plan_inputs) {
        if (input->count() == 0) throw CLI::RequiredError(input->get_name());
      }
    }
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "hetermoe-plan: error: %s\n", e.what());
    return 1;
  }
  try {
    if (dedup->parsed()) return Dedup(dedup_options);
    if (swap->parsed()) return Swap(swap_options);
    return simulate->parsed() ? Simulate(so) : Run(o);
  } catch (const hetermoe::Error& e) {
    std::fprintf(stderr, "hetermoe-plan: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hetermoe-plan: internal error: %s\n", e.what());
    return 3;
  }
}
