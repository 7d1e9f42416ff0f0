// Waiting for asynchronous work with a deadline: the pure polling loop behind
// NcclCommunicator::Wait (and usable for any poll-able operation), kept apart
// from NCCL so that the CPU tests can drive it with fake polls and clocks.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <thread>

namespace hetermoe::comm {

enum class PollState { kDone, kPending, kFailed };

struct WaitOutcome {
  enum class Kind { kDone, kFailed, kTimedOut } kind = Kind::kDone;
  std::chrono::milliseconds waited{0};
};

// Calls poll() until it returns kDone or kFailed, or until `timeout` has
// passed since the call (then kTimedOut). Between polls it sleeps `pause`
// (0 = yield). `now` and `sleep` default to the steady clock and
// std::this_thread::sleep_for; tests pass fakes.
inline WaitOutcome WaitWithDeadline(
    const std::function<PollState()>& poll, std::chrono::milliseconds timeout,
    std::chrono::microseconds pause = std::chrono::microseconds(100),
    const std::function<std::chrono::steady_clock::time_point()>& now = [] {
      return std::chrono::steady_clock::now();
    },
    const std::function<void(std::chrono::microseconds)>& sleep =
        [](std::chrono::microseconds d) {
          if (d.count() > 0) std::this_thread::sleep_for(d);
          else std::this_thread::yield();
        }) {
  const auto start = now();
  WaitOutcome out;
  for (;;) {
    const PollState s = poll();
    out.waited = std::chrono::duration_cast<std::chrono::milliseconds>(now() - start);
    if (s == PollState::kDone) return out;
    if (s == PollState::kFailed) {
      out.kind = WaitOutcome::Kind::kFailed;
      return out;
    }
    if (now() - start >= timeout) {
      out.kind = WaitOutcome::Kind::kTimedOut;
      return out;
    }
    sleep(pause);
  }
}

}  // namespace hetermoe::comm
