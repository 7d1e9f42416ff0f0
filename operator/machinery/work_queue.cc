// WorkQueue: see work_queue.h.
#include "operator/machinery/work_queue.h"

namespace hetermoe::op {

WorkQueue::WorkQueue(RateLimits limits, Hooks hooks) : limiter_(limits), hooks_(std::move(hooks)) {}

void WorkQueue::AddLocked(const std::string& key) {
  if (shutting_down_ || dirty_.count(key)) return;
  dirty_.insert(key);
  if (hooks_.on_add) hooks_.on_add();
  if (processing_.count(key)) return;
  queue_.push_back(key);
  if (hooks_.on_depth) hooks_.on_depth(queue_.size());
  cv_.notify_one();
}

void WorkQueue::Add(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  AddLocked(key);
}

void WorkQueue::AddAfter(const std::string& key, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  if (shutting_down_) return;
  if (seconds <= 0) {
    AddLocked(key);
    return;
  }
  auto when = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  delayed_.push({when, key});
  cv_.notify_all();  // a waiting Get() may need an earlier wake-up
}

void WorkQueue::AddRateLimited(const std::string& key) {
  double now = std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
  double delay = limiter_.When(key, now);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (hooks_.on_retry) hooks_.on_retry();
  }
  AddAfter(key, delay);
}

void WorkQueue::Forget(const std::string& key) { limiter_.Forget(key); }
int WorkQueue::Retries(const std::string& key) { return limiter_.Failures(key); }

void WorkQueue::PromoteDueLocked(Clock::time_point now) {
  while (!delayed_.empty() && delayed_.top().first <= now) {
    std::string key = delayed_.top().second;
    delayed_.pop();
    AddLocked(key);
  }
}

std::optional<std::string> WorkQueue::GetUntil(std::optional<Clock::time_point> deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    PromoteDueLocked(Clock::now());
    if (!queue_.empty()) {
      std::string key = std::move(queue_.front());
      queue_.pop_front();
      dirty_.erase(key);
      processing_.insert(key);
      if (hooks_.on_depth) hooks_.on_depth(queue_.size());
      return key;
    }
    if (shutting_down_) return std::nullopt;
    std::optional<Clock::time_point> wake = deadline;
    if (!delayed_.empty() && (!wake || delayed_.top().first < *wake)) wake = delayed_.top().first;
    if (wake) {
      if (cv_.wait_until(lock, *wake) == std::cv_status::timeout && deadline && Clock::now() >= *deadline) {
        PromoteDueLocked(Clock::now());
        if (queue_.empty()) return std::nullopt;
      }
    } else {
      cv_.wait(lock);
    }
  }
}

std::optional<std::string> WorkQueue::Get() { return GetUntil(std::nullopt); }

std::optional<std::string> WorkQueue::GetFor(std::chrono::milliseconds timeout) {
  return GetUntil(Clock::now() + timeout);
}

void WorkQueue::Done(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  processing_.erase(key);
  if (dirty_.count(key)) {
    queue_.push_back(key);
    if (hooks_.on_depth) hooks_.on_depth(queue_.size());
    cv_.notify_one();
  }
}

void WorkQueue::ShutDown() {
  std::lock_guard<std::mutex> lock(mu_);
  shutting_down_ = true;
  cv_.notify_all();
}

bool WorkQueue::ShuttingDown() {
  std::lock_guard<std::mutex> lock(mu_);
  return shutting_down_;
}

size_t WorkQueue::Len() {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.size();
}

}  // namespace hetermoe::op
