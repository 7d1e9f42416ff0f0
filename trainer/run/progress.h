// A progress bar for long runs on stderr: redrawn in place on a terminal, a
// plain line every ~5% of the run otherwise (logs, CI).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace hetermoe::run {

class ProgressBar {
 public:
  ProgressBar(int64_t first_step, int64_t total_steps, bool enabled);
  // val_loss: this step's validation loss, if it evaluated; the last one
  // stays on the line until the next.
  void Update(int64_t step, double loss, double tokens_per_second, std::optional<double> val_loss = std::nullopt);
  void Finish();

  // A one-line curve of values (e.g. the loss per step) in block characters,
  // `width` columns, each the mean of its share of the values.
  static std::string Sparkline(const std::vector<double>& values, int width);

  // Pure formatting, for tests: "[#####-----]  50/100 loss 2.3456 | 1,234 tok/s | ETA 1m05s",
  // with " val 2.5000" after the loss when there is a validation loss.
  static std::string Format(int64_t step, int64_t total, double loss, double tokens_per_second,
                            double eta_seconds, int width, std::optional<double> val_loss = std::nullopt);

 private:
  int64_t first_step_, total_;
  bool enabled_, tty_;
  std::chrono::steady_clock::time_point start_;
  int64_t last_printed_ = -1;
  std::optional<double> val_loss_;
};

}  // namespace hetermoe::run
