// The polling loop behind NcclCommunicator::Wait (trainer/comm/deadline.h),
// driven by fake polls and a fake clock: a dead peer must become a timeout,
// an NCCL error a failure, and completion must stop the loop at once.
#include <gtest/gtest.h>

#include "trainer/comm/deadline.h"

namespace hetermoe::comm {
namespace {

using std::chrono::milliseconds;
using std::chrono::microseconds;
using Clock = std::chrono::steady_clock;

// A clock that advances only when the loop sleeps.
struct FakeClock {
  Clock::time_point t{};
  std::function<Clock::time_point()> Now() {
    return [this] { return t; };
  }
  std::function<void(microseconds)> Sleep() {
    return [this](microseconds d) { t += d; };
  }
};

TEST(Deadline, TableOfOutcomes) {
  struct Case {
    const char* name;
    int pending_polls;     // polls that report kPending first
    PollState then;        // what the poll reports afterwards
    milliseconds timeout;
    WaitOutcome::Kind expect;
  };
  const Case cases[] = {
      {"done at once", 0, PollState::kDone, milliseconds(10), WaitOutcome::Kind::kDone},
      {"done before the deadline", 50, PollState::kDone, milliseconds(10), WaitOutcome::Kind::kDone},
      {"async error", 3, PollState::kFailed, milliseconds(10), WaitOutcome::Kind::kFailed},
      {"dead peer", 1000000, PollState::kDone, milliseconds(10), WaitOutcome::Kind::kTimedOut},
  };
  for (const Case& c : cases) {
    FakeClock clock;
    int polls = 0;
    const WaitOutcome w = WaitWithDeadline(
        [&] { return polls++ < c.pending_polls ? PollState::kPending : c.then; }, c.timeout,
        microseconds(100), clock.Now(), clock.Sleep());
    EXPECT_EQ(w.kind, c.expect) << c.name;
    if (c.expect == WaitOutcome::Kind::kTimedOut) {
      EXPECT_GE(w.waited, c.timeout) << c.name;
      EXPECT_LE(w.waited, c.timeout + milliseconds(1)) << c.name;  // stops promptly
    }
  }
}

TEST(Deadline, RealClockTimesOut) {
  const auto start = Clock::now();
  const WaitOutcome w = WaitWithDeadline([] { return PollState::kPending; }, milliseconds(20));
  EXPECT_EQ(w.kind, WaitOutcome::Kind::kTimedOut);
  EXPECT_GE(Clock::now() - start, milliseconds(20));
}

}  // namespace
}  // namespace hetermoe::comm
