// Progress from trainer metrics: see progress.h.
#include "operator/core/progress.h"

#include <cmath>
#include <sstream>

namespace hetermoe::op {

std::map<std::string, double> ParsePrometheusSamples(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    size_t space = line.find(' ');
    if (space == std::string::npos) continue;
    std::string name = line.substr(0, space);
    if (name.find('{') != std::string::npos) continue;  // labelled series are not ours
    try {
      out[name] = std::stod(line.substr(space + 1));
    } catch (...) {
      // NaN/garbage: skip the sample
    }
  }
  return out;
}

std::optional<Progress> ProgressFromMetrics(const std::string& text, const TrainingSpec& training,
                                            const std::string& now) {
  auto samples = ParsePrometheusSamples(text);
  auto step = samples.find(kTrainerStepMetric);
  if (step == samples.end() || !std::isfinite(step->second)) return std::nullopt;
  Progress p;
  p.step = static_cast<int64_t>(step->second);
  p.total_steps = training.steps;
  p.percentage = training.steps > 0 ? std::round(1000.0 * static_cast<double>(p.step) / training.steps) / 10.0 : 0;
  if (auto loss = samples.find(kTrainerLossMetric); loss != samples.end() && std::isfinite(loss->second))
    p.loss = loss->second;
  if (auto tps = samples.find(kTrainerTokensPerSecondMetric); tps != samples.end() && tps->second > 0) {
    p.tokens_per_second = tps->second;
    const double tokens_per_step = static_cast<double>(training.global_batch) * static_cast<double>(training.seq_len);
    const int64_t remaining = std::max<int64_t>(0, training.steps - p.step);
    p.eta_seconds = std::round(static_cast<double>(remaining) * tokens_per_step / tps->second);
  }
  p.update_time = now;
  return p;
}

}  // namespace hetermoe::op
