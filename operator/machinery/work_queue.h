// WorkQueue: the controller's queue of keys ("namespace/name"), with the
// guarantees client-go's workqueue gives:
//  - a key is queued at most once however often it is added (dirty set);
//  - a key being processed is never handed to a second worker; added again
//    meanwhile, it is queued once when Done() is called;
//  - AddAfter() delays an add; AddRateLimited() delays it by the rate
//    limiter (per-key exponential backoff and the overall token bucket);
//    Forget() resets the key's backoff after a success;
//  - ShutDown() wakes every Get() and makes it return nullopt.
// Thread-safe. Delayed adds are kept in a heap served by Get() itself.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <queue>
#include <set>
#include <string>
#include <vector>

#include "operator/machinery/rate_limiter.h"

namespace hetermoe::op {

class WorkQueue {
 public:
  using Clock = std::chrono::steady_clock;
  struct Hooks {  // metrics; called with the queue's lock held, keep cheap
    std::function<void()> on_add;
    std::function<void()> on_retry;
    std::function<void(size_t)> on_depth;
  };

  explicit WorkQueue(RateLimits limits = {}, Hooks hooks = {});

  void Add(const std::string& key);
  void AddAfter(const std::string& key, double seconds);
  void AddRateLimited(const std::string& key);
  void Forget(const std::string& key);
  int Retries(const std::string& key);

  // Blocks until a key is ready or the queue shuts down.
  std::optional<std::string> Get();
  // Like Get() but gives up after `timeout`.
  std::optional<std::string> GetFor(std::chrono::milliseconds timeout);
  void Done(const std::string& key);

  void ShutDown();
  bool ShuttingDown();
  size_t Len();

 private:
  void AddLocked(const std::string& key);
  void PromoteDueLocked(Clock::time_point now);
  std::optional<std::string> GetUntil(std::optional<Clock::time_point> deadline);

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;
  std::set<std::string> dirty_, processing_;
  using Delayed = std::pair<Clock::time_point, std::string>;
  std::priority_queue<Delayed, std::vector<Delayed>, std::greater<Delayed>> delayed_;
  bool shutting_down_ = false;
  QueueRateLimiter limiter_;
  Hooks hooks_;
};

}  // namespace hetermoe::op
