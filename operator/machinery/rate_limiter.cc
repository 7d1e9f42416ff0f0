// Token bucket and per-item backoff: see rate_limiter.h.
#include "operator/machinery/rate_limiter.h"

#include <algorithm>
#include <cmath>

namespace hetermoe::op {

TokenBucket::TokenBucket(double qps, int burst) : qps_(qps), burst_(std::max(1, burst)), tokens_(burst_) {}

double TokenBucket::Reserve(double now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (last_ < 0) last_ = now;
  if (now > last_) {
    tokens_ = std::min(burst_, tokens_ + (now - last_) * qps_);
    last_ = now;
  }
  tokens_ -= 1;  // may go negative: a booked future token
  if (tokens_ >= 0) return 0;
  return -tokens_ / qps_;
}

ItemBackoff::ItemBackoff(double base_seconds, double max_seconds) : base_(base_seconds), max_(max_seconds) {}

double ItemBackoff::When(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  int n = failures_[key]++;
  if (n > 60) return max_;
  return std::min(max_, base_ * std::ldexp(1.0, n));
}

void ItemBackoff::Forget(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  failures_.erase(key);
}

int ItemBackoff::Failures(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = failures_.find(key);
  return it == failures_.end() ? 0 : it->second;
}

QueueRateLimiter::QueueRateLimiter(RateLimits limits)
    : backoff_(limits.base_seconds, limits.max_seconds), bucket_(limits.qps, limits.burst) {}

double QueueRateLimiter::When(const std::string& key, double now) {
  double item = backoff_.When(key);
  double overall = bucket_.Reserve(now);
  return std::max(item, overall);
}

}  // namespace hetermoe::op
