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

namespace {

Progress MakeProgress(int64_t step, std::optional<double> loss, std::optional<double> tokens_per_second,
                      std::optional<double> val_loss, const TrainingSpec& training, const std::string& now) {
  Progress p;
  if (val_loss && std::isfinite(*val_loss)) p.val_loss = val_loss;
  p.step = step;
  p.total_steps = training.steps;
  p.percentage = training.steps > 0 ? std::round(1000.0 * static_cast<double>(p.step) / training.steps) / 10.0 : 0;
  if (loss && std::isfinite(*loss)) p.loss = loss;
  if (tokens_per_second && *tokens_per_second > 0) {
    p.tokens_per_second = tokens_per_second;
    const double tokens_per_step = static_cast<double>(training.global_batch) * static_cast<double>(training.seq_len);
    const int64_t remaining = std::max<int64_t>(0, training.steps - p.step);
    p.eta_seconds = std::round(static_cast<double>(remaining) * tokens_per_step / *tokens_per_second);
  }
  p.update_time = now;
  return p;
}

}  // namespace

std::optional<Progress> ProgressFromMetrics(const std::string& text, const TrainingSpec& training,
                                            const std::string& now) {
  auto samples = ParsePrometheusSamples(text);
  auto step = samples.find(kTrainerStepMetric);
  if (step == samples.end() || !std::isfinite(step->second)) return std::nullopt;
  auto value = [&](const char* name) -> std::optional<double> {
    auto it = samples.find(name);
    return it == samples.end() ? std::nullopt : std::optional<double>(it->second);
  };
  return MakeProgress(static_cast<int64_t>(step->second), value(kTrainerLossMetric),
                      value(kTrainerTokensPerSecondMetric), value(kTrainerValLossMetric), training, now);
}

std::optional<Progress> ProgressFromSummary(const std::string& message, const TrainingSpec& training,
                                            const std::string& now) {
  const auto j = nlohmann::json::parse(message, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) return std::nullopt;
  auto number = [&](const char* key) -> std::optional<double> {
    return j.contains(key) && j[key].is_number() ? std::optional<double>(j[key].get<double>()) : std::nullopt;
  };
  return MakeProgress(j["step"].get<int64_t>(), number("loss"), number("tokens_per_second"), number("val_loss"),
                      training, now);
}

}  // namespace hetermoe::op
