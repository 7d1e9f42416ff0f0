// A progress bar for long runs on stderr: redrawn in place on a terminal, a
// plain line every ~5% of the run otherwise (logs, CI).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace hetermoe::run {

class ProgressBar {
 public:
  ProgressBar(int64_t first_step, int64_t total_steps, bool enabled);
  void Update(int64_t step, double loss, double tokens_per_second);
  void Finish();

  // A one-line curve of values (e.g. the loss per step) in block characters,
  // `width` columns, each the mean of its share of the values.
  static std::string Sparkline(const std::vector<double>& values, int width);

  // Pure formatting, for tests: "[#####-----]  50/100 loss 2.3456 | 1,234 tok/s | ETA 1m05s".
  static std::string Format(int64_t step, int64_t total, double loss, double tokens_per_second,
                            double eta_seconds, int width);

 private:
  int64_t first_step_, total_;
  bool enabled_, tty_;
  std::chrono::steady_clock::time_point start_;
  int64_t last_printed_ = -1;
};

}  // namespace hetermoe::run
