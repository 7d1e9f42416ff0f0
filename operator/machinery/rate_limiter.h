// Rate limiting for the work queue and the REST client.
//
//  - TokenBucket: `qps` tokens per second, at most `burst` saved up. Reserve()
//    takes a token now or books the next one and says how long to wait
//    (client-go's BucketRateLimiter / flowcontrol).
//  - ItemBackoff: per-key exponential delay base * 2^failures, capped.
//  - QueueRateLimiter: the controller default, the larger of the two
//    (5 ms -> 1000 s per item; 10 qps, burst 100 overall).
//
// Time is passed in (steady-clock seconds) so tests drive it. All three are
// thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

namespace hetermoe::op {

class TokenBucket {
 public:
  TokenBucket(double qps, int burst);
  // Seconds to wait before the reserved token may be used (0 = now).
  double Reserve(double now);

 private:
  std::mutex mu_;
  double qps_, burst_;
  double tokens_;
  double last_ = -1;
};

class ItemBackoff {
 public:
  ItemBackoff(double base_seconds, double max_seconds);
  double When(const std::string& key);  // delay for this failure; counts it
  void Forget(const std::string& key);
  int Failures(const std::string& key);

 private:
  std::mutex mu_;
  double base_, max_;
  std::map<std::string, int> failures_;
};

// The controller defaults: 5 ms -> 1000 s per item; 10 qps, burst 100.
struct RateLimits {
  double base_seconds = 0.005;
  double max_seconds = 1000;
  double qps = 10;
  int burst = 100;
};

class QueueRateLimiter {
 public:
  explicit QueueRateLimiter(RateLimits limits = {});
  double When(const std::string& key, double now);
  void Forget(const std::string& key) { backoff_.Forget(key); }
  int Failures(const std::string& key) { return backoff_.Failures(key); }

 private:
  ItemBackoff backoff_;
  TokenBucket bucket_;
};

}  // namespace hetermoe::op
