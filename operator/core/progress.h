// Training progress from the trainer's Prometheus metrics (rank 0's
// hetermoe_trainer_step, hetermoe_trainer_loss and
// hetermoe_trainer_tokens_per_second gauges, see trainer/run/metrics.cc),
// turned into the job's status.progress: step, percentage of
// training.steps, tokens/s, loss, and an ETA from the throughput
// (remaining steps x globalBatch x seqLen / tokens per second). Pure.
#pragma once

#include <map>
#include <optional>
#include <string>

#include "operator/api/hetermoejob.h"

namespace hetermoe::op {

inline constexpr const char* kTrainerStepMetric = "hetermoe_trainer_step";
inline constexpr const char* kTrainerLossMetric = "hetermoe_trainer_loss";
inline constexpr const char* kTrainerTokensPerSecondMetric = "hetermoe_trainer_tokens_per_second";
inline constexpr const char* kTrainerValLossMetric = "hetermoe_trainer_val_loss";  // once the run evaluated

// Unlabelled samples of the Prometheus text format ("name value" lines).
std::map<std::string, double> ParsePrometheusSamples(const std::string& text);

// nullopt when the text has no step yet.
std::optional<Progress> ProgressFromMetrics(const std::string& text, const TrainingSpec& training,
                                            const std::string& now);

// The final progress from rank 0's termination message when it succeeded
// ({"step": N, "loss": x, "tokens_per_second": y[, "val_loss": v]}, written by
// hetermoe-trainer); nullopt when the message is not such a summary.
std::optional<Progress> ProgressFromSummary(const std::string& message, const TrainingSpec& training,
                                            const std::string& now);

}  // namespace hetermoe::op
