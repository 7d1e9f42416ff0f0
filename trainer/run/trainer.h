// The single-process training loop: run file -> model, data, optimizer ->
// steps (micro-batches, clipping, schedule, AdamW) -> metrics and checkpoints.
//
// Each optimizer step: zero grads; for each micro-batch j of R: forward,
// backward with loss scale 1/R; clip; lr = schedule(step); AdamW. The step's
// reported loss is the mean over micro-batches of (ce + coef * aux), computed
// before that step's update (docs/model.md, "Loss").
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "trainer/run/metrics.h"
#include "trainer/run/run_config.h"

namespace hetermoe::run {

// What this process is in a run, decided once by the program
// (trainer/cmd/trainer_main.cc) from the run file and whether the local
// launcher started it.
enum class ProcessRole {
  kSingle,     // the whole run in this process (no parallel section)
  kLauncher,   // parallel.launch local: starts every rank here (LaunchLocally), trains nothing itself
  kLocalRank,  // a rank the local launcher started: shares this machine's cores with the others
  kRank,       // a rank of a run started elsewhere (parallel.launch env: a pod)
};
ProcessRole DecideProcessRole(const RunConfig& config, bool started_by_local_launcher);

struct TrainOptions {
  ProcessRole role = ProcessRole::kSingle;
  std::string resume;           // checkpoint folder, "auto" (latest in output.dir) or ""
  std::string metrics_bind;     // e.g. "0.0.0.0:9400"; "" = no Prometheus endpoint
  double metrics_linger_seconds = 0;  // keep serving after the last step
  bool progress = true;         // progress bar on stderr
  std::string trace_path;       // distributed runs: Chrome trace JSON of every rank
  std::vector<std::string> argv;  // the command line, for the local launcher to re-run
  // Called after each step (tests, the Prometheus test's hold-open hook).
  std::function<void(const StepMetrics&)> on_step;
};

struct TrainResult {
  int64_t first_step = 0;       // steps already done when this run started
  int64_t last_step = 0;
  std::vector<StepMetrics> steps;
  std::string final_dir;
  bool wrote_outputs = true;    // false on distributed ranks other than 0
  int stopped_by_signal = 0;    // the local launcher was stopped (Ctrl-C): exit 128 + this
};

TrainResult Train(const RunConfig& config, const TrainOptions& options);

}  // namespace hetermoe::run
