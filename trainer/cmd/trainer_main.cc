// hetermoe-trainer: the program's edge. Parses the command line, runs the
// training loop or a tool, and turns every error into one line on stderr
// (and in /dev/termination-log when a kubelet provides it) and an exit
// status from hetermoe::exit_status: 1 for bad input, 175 for failures a
// restart can cure (RetryableError), 3 for anything else.
//
//   hetermoe-trainer --config run.yaml [--set key=value ...] [--resume DIR|auto]
//                    [--metrics-port PORT [--metrics-linger SECONDS]] [--no-progress]
//   hetermoe-trainer prepare-data --input a.txt [b.txt ...] --output tokens.bin
//                    [--tokenizer tokenizer.model [--split file|blank-line]]
//   hetermoe-trainer train-tokenizer --input corpus.txt [...] --output tokenizer.model
//                    [--vocab-size 1024]
#include <CLI/CLI.hpp>

#include <unistd.h>

#include <csignal>

#include <cstdio>
#include <string>
#include <vector>

#include "common/error.h"
#include "trainer/data/prepare.h"
#include "trainer/data/tokenizer.h"
#include "trainer/parallel/launcher.h"
#include "trainer/run/distributed.h"
#include "trainer/run/progress.h"
#include "trainer/run/run_config.h"
#include "trainer/run/trainer.h"

namespace {

// Kubernetes shows this file's content as the container's termination
// message (the operator puts it in the job's conditions). Only written when
// the kubelet created it: never create files under /dev.
void WriteTerminationMessage(const std::string& line) {
  const char* path = "/dev/termination-log";
  if (::access(path, W_OK) != 0) return;
  if (FILE* f = std::fopen(path, "w")) {
    std::fprintf(f, "%s\n", line.c_str());
    std::fclose(f);
  }
}

// SIGTERM (what Kubernetes sends a pod it deletes) and SIGINT stop a rank at
// once with 128 + the signal, as the default action would; installed
// explicitly because a container's PID 1 ignores signals it has no handler
// for. Checkpoints are written to a temporary folder and renamed, so an
// interrupted one is never read. The local launcher installs its own
// handlers (forwarding to its ranks) while it runs.
extern "C" void StopOnSignal(int sig) {
  const char message[] = "hetermoe-trainer: stopped by a signal\n";
  [[maybe_unused]] const ssize_t n = ::write(STDERR_FILENO, message, sizeof message - 1);
  ::_exit(128 + sig);
}

void InstallStopHandlers() {
  struct sigaction sa {};
  sa.sa_handler = StopOnSignal;
  ::sigemptyset(&sa.sa_mask);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
}

int Fail(const std::string& line, int status) {
  std::fprintf(stderr, "%s\n", line.c_str());
  WriteTerminationMessage(line);
  return status;
}

int RunTrain(const std::string& config_path, const std::vector<std::string>& overrides,
             const std::string& resume, int metrics_port, const std::string& metrics_host,
             double linger_seconds, bool progress, const std::string& trace,
             const std::vector<std::string>& argv) {
  const hetermoe::run::RunConfig rc = hetermoe::run::LoadRunConfig(config_path, overrides);
  hetermoe::run::TrainOptions options;
  options.resume = resume;
  options.progress = progress;
  if (metrics_port >= 0) options.metrics_bind = metrics_host + ":" + std::to_string(metrics_port);
  options.metrics_linger_seconds = linger_seconds;
  options.trace_path = trace;
  options.argv = argv;
  options.role = hetermoe::run::DecideProcessRole(rc, hetermoe::parallel::IsLaunchedChild());
  const auto result = options.role == hetermoe::run::ProcessRole::kLauncher ? hetermoe::run::LaunchLocally(rc, options)
                                                                            : hetermoe::run::Train(rc, options);
  // The summary is the launcher's (or the single process's, or rank 0's in a
  // pod), never a locally launched rank's.
  if (result.stopped_by_signal != 0) {
    std::fprintf(stderr, "hetermoe-trainer: stopped by a signal (every rank too)\n");
    return 128 + result.stopped_by_signal;
  }
  const bool reports = result.wrote_outputs && options.role != hetermoe::run::ProcessRole::kLocalRank;
  // Rank 0's last word to Kubernetes: the final step, loss and speed, which
  // the operator keeps in status.progress once the pods are gone.
  if (!result.steps.empty() && reports) {
    const auto& last = result.steps.back();
    char summary[256], val[64] = "";
    if (last.val_loss) std::snprintf(val, sizeof val, ", \"val_loss\": %.9g", *last.val_loss);
    std::snprintf(summary, sizeof summary, "{\"step\": %lld, \"loss\": %.9g, \"tokens_per_second\": %.6g%s}",
                  static_cast<long long>(last.step), last.loss, last.tokens_per_second, val);
    WriteTerminationMessage(summary);
  }
  if (!result.steps.empty() && reports) {
    const auto& last = result.steps.back();
    double tps = 0;
    for (const auto& s : result.steps) tps += s.tokens_per_second;
    std::vector<double> losses;
    for (const auto& s : result.steps) losses.push_back(s.loss);
    if (losses.size() > 1)
      std::fprintf(stderr, "loss %.3f %s %.3f\n", losses.front(),
                   hetermoe::run::ProgressBar::Sparkline(losses, 60).c_str(), losses.back());
    char val[48] = "";
    if (last.val_loss) std::snprintf(val, sizeof val, ", validation loss %.4f", *last.val_loss);
    std::fprintf(stderr, "trained steps %lld..%lld: final loss %.4f%s, mean %.0f tok/s; saved %s\n",
                 static_cast<long long>(result.first_step + 1),
                 static_cast<long long>(result.last_step), last.loss, val,
                 tps / static_cast<double>(result.steps.size()), result.final_dir.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"hetermoe-trainer: trains Mixtral-style MoE models, in one process or as attention and expert ranks"};
  app.set_version_flag("--version", "hetermoe-trainer 0.1.0");
  std::string config_path, resume, metrics_host = "0.0.0.0";
  std::vector<std::string> overrides;
  int metrics_port = -1;
  bool no_progress = false;
  double linger_seconds = 0;
  std::string trace;
  app.add_option("--config,-c", config_path, "Run file (YAML)")->check(CLI::ExistingFile);
  app.add_option("--set", overrides, "Override a run-file key: dotted.key=value (repeatable)");
  app.add_option("--resume", resume, "Resume from a checkpoint folder, or 'auto' for the latest in output.dir");
  app.add_option("--metrics-port", metrics_port, "Serve Prometheus metrics on this port (0 = any free port)")
      ->check(CLI::Range(0, 65535));
  app.add_option("--metrics-host", metrics_host, "Address to bind the metrics endpoint");
  app.add_option("--metrics-linger", linger_seconds,
                 "Keep serving metrics this many seconds after training, for a last scrape")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--trace", trace, "Distributed runs: write a Chrome trace (chrome://tracing, Perfetto) of every rank here");
  app.add_flag("--no-progress", no_progress, "No progress bar");

  auto* prep = app.add_subcommand(
      "prepare-data", "Turn text files into a token file: bytes (vocabulary 256), or a SentencePiece tokenizer's ids "
                      "with an end-of-sequence id after every document");
  hetermoe::data::DataPreparation preparation;
  std::string split = "file";
  prep->add_option("--input,-i", preparation.inputs, "Text files, in order")->required()->expected(1, -1);
  prep->add_option("--output,-o", preparation.output, "Token file to write")->required();
  prep->add_option("--tokenizer,-t", preparation.tokenizer, "SentencePiece model (tokenizer.model); default: bytes");
  prep->add_option("--split", split, "With --tokenizer, a document is a whole file or a blank-line separated block")
      ->check(CLI::IsMember({"file", "blank-line"}));

  auto* train_tok = app.add_subcommand(
      "train-tokenizer", "Train a small SentencePiece tokenizer (byte-fallback BPE, exact round trip) on text files");
  hetermoe::data::TokenizerTraining training;
  train_tok->add_option("--input,-i", training.inputs, "Text files")->required()->expected(1, -1);
  train_tok->add_option("--output,-o", training.output, "The tokenizer.model to write")->required();
  train_tok->add_option("--vocab-size", training.vocab_size, "Vocabulary size (the model's vocab_size must be >= it)")
      ->check(CLI::Range(300, 1 << 20));

  CLI11_PARSE(app, argc, argv);
  InstallStopHandlers();
  try {
    if (*prep) {
      preparation.split = hetermoe::data::ParseDocumentSplit(split);
      const auto prepared = hetermoe::data::PrepareTokens(preparation);
      std::fprintf(stderr, "wrote %lld tokens (%lld documents, vocabulary %lld) to %s\n",
                   static_cast<long long>(prepared.tokens), static_cast<long long>(prepared.documents),
                   static_cast<long long>(prepared.vocab_size), preparation.output.c_str());
      return 0;
    }
    if (*train_tok) {
      hetermoe::data::TrainTokenizer(training);
      const hetermoe::data::Tokenizer trained(training.output);
      std::fprintf(stderr, "wrote a tokenizer of %lld pieces to %s\n", static_cast<long long>(trained.vocab_size()),
                   training.output.c_str());
      return 0;
    }
    if (config_path.empty()) {
      std::fprintf(stderr, "hetermoe-trainer: error: --config is required (see --help)\n");
      return hetermoe::exit_status::kUsage;
    }
    return RunTrain(config_path, overrides, resume, metrics_port, metrics_host, linger_seconds,
                    !no_progress, trace, std::vector<std::string>(argv, argv + argc));
  } catch (const hetermoe::RetryableError& e) {
    return Fail(std::string("hetermoe-trainer: error (retryable): ") + e.what(), hetermoe::exit_status::kRetryable);
  } catch (const hetermoe::Error& e) {
    return Fail(std::string("hetermoe-trainer: error: ") + e.what(), hetermoe::exit_status::kPermanent);
  } catch (const std::exception& e) {
    return Fail(std::string("hetermoe-trainer: internal error: ") + e.what(), hetermoe::exit_status::kInternal);
  }
}
