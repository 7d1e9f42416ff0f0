#include "trainer/run/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace hetermoe::run {
namespace {

std::string WithThousands(int64_t v) {
  std::string s = std::to_string(v);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(i, ",");
  return s;
}

std::string Duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60));
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  else
    std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
  return buf;
}

}  // namespace

ProgressBar::ProgressBar(int64_t first_step, int64_t total_steps, bool enabled)
    : first_step_(first_step), total_(total_steps), enabled_(enabled),
      tty_(::isatty(STDERR_FILENO) == 1), start_(std::chrono::steady_clock::now()) {}

std::string ProgressBar::Format(int64_t step, int64_t total, double loss, double tps,
                                double eta_seconds, int width, std::optional<double> val_loss) {
  const int filled = total > 0 ? static_cast<int>(width * step / total) : width;
  std::string bar = "[" + std::string(filled, '#') + std::string(width - filled, '-') + "]";
  char buf[160];
  const int digits = static_cast<int>(std::to_string(total).size());
  char val[32] = "";
  if (val_loss) std::snprintf(val, sizeof val, " val %.4f", *val_loss);
  std::snprintf(buf, sizeof buf, " %*lld/%lld loss %.4f%s | %s tok/s | ETA %s", digits,
                static_cast<long long>(step), static_cast<long long>(total), loss, val,
                WithThousands(static_cast<int64_t>(tps + 0.5)).c_str(), Duration(eta_seconds).c_str());
  return bar + buf;
}

std::string ProgressBar::Sparkline(const std::vector<double>& values, int width) {
  static const char* kBlocks[] = {"\u2581", "\u2582", "\u2583", "\u2584",
                                  "\u2585", "\u2586", "\u2587", "\u2588"};
  if (values.empty() || width <= 0) return "";
  const int n = static_cast<int>(values.size());
  width = std::min(width, n);
  std::vector<double> cols(width);
  for (int c = 0; c < width; ++c) {
    const int a = static_cast<int>(int64_t{c} * n / width), b = static_cast<int>(int64_t{c + 1} * n / width);
    double sum = 0;
    for (int i = a; i < b; ++i) sum += values[i];
    cols[c] = sum / std::max(1, b - a);
  }
  const double lo = *std::min_element(cols.begin(), cols.end());
  const double hi = *std::max_element(cols.begin(), cols.end());
  std::string out;
  for (double v : cols) {
    const int level = hi > lo ? static_cast<int>((v - lo) / (hi - lo) * 7.0 + 0.5) : 0;
    out += kBlocks[level];
  }
  return out;
}

void ProgressBar::Update(int64_t step, double loss, double tps, std::optional<double> val_loss) {
  if (!enabled_) return;
  if (val_loss) val_loss_ = val_loss;
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const int64_t done = step - first_step_;
  const double eta = done > 0 ? elapsed / done * (total_ - step) : NAN;
  const std::string line = Format(step, total_, loss, tps, eta, 30, val_loss_);
  if (tty_) {
    std::fprintf(stderr, "\r%s\033[K", line.c_str());
  } else {
    const int64_t every = std::max<int64_t>(1, total_ / 20);
    if (step != total_ && step % every != 0 && last_printed_ >= 0) return;
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  last_printed_ = step;
  std::fflush(stderr);
}

void ProgressBar::Finish() {
  if (enabled_ && tty_) std::fprintf(stderr, "\n");
}

}  // namespace hetermoe::run
