// The rate limiter (driven by an explicit clock) and the work queue's
// guarantees (dedup, one worker per key, delayed adds, shutdown).
#include "operator/machinery/rate_limiter.h"

#include <atomic>
#include <thread>

#include <gtest/gtest.h>

#include "operator/machinery/work_queue.h"

namespace hetermoe::op {
namespace {

TEST(ItemBackoff, DoublesFrom5msAndCapsAt1000s) {
  ItemBackoff b(0.005, 1000);
  const double expected[] = {0.005, 0.01, 0.02, 0.04, 0.08};
  for (double e : expected) EXPECT_DOUBLE_EQ(b.When("a"), e);
  EXPECT_DOUBLE_EQ(b.When("other"), 0.005) << "per key";
  for (int i = 0; i < 30; ++i) b.When("a");
  EXPECT_DOUBLE_EQ(b.When("a"), 1000);
  b.Forget("a");
  EXPECT_DOUBLE_EQ(b.When("a"), 0.005);
  EXPECT_EQ(b.Failures("a"), 1);
}

TEST(TokenBucket, BurstThenQps) {
  TokenBucket bucket(10, 100);
  double now = 1000;
  for (int i = 0; i < 100; ++i) EXPECT_EQ(bucket.Reserve(now), 0) << i;
  EXPECT_NEAR(bucket.Reserve(now), 0.1, 1e-9) << "the 101st waits one token time";
  EXPECT_NEAR(bucket.Reserve(now), 0.2, 1e-9) << "reservations queue up";
  now += 10;  // refills 100 tokens, minus the two booked
  int free = 0;
  while (bucket.Reserve(now) == 0) ++free;
  EXPECT_EQ(free, 98);
}

TEST(QueueRateLimiter, LargerOfItemAndOverall) {
  QueueRateLimiter limiter;  // defaults: 5 ms .. 1000 s, 10 qps burst 100
  double now = 50;
  EXPECT_DOUBLE_EQ(limiter.When("k", now), 0.005);
  for (int i = 0; i < 99; ++i) limiter.When("k" + std::to_string(i), now);
  EXPECT_NEAR(limiter.When("fresh", now), 0.1, 1e-9) << "bucket empty: the overall limit dominates";
  for (int i = 0; i < 20; ++i) limiter.When("k", now + 1e6);
  EXPECT_DOUBLE_EQ(limiter.When("k", now + 2e6), 1000);
}

TEST(WorkQueue, DeduplicatesQueuedKeys) {
  WorkQueue q;
  q.Add("a");
  q.Add("a");
  q.Add("b");
  EXPECT_EQ(q.Len(), 2u);
  EXPECT_EQ(q.Get(), "a");
  EXPECT_EQ(q.Get(), "b");
}

TEST(WorkQueue, KeyInProcessingIsRequeuedOnlyAfterDone) {
  WorkQueue q;
  q.Add("a");
  auto key = q.Get();
  ASSERT_EQ(key, "a");
  q.Add("a");  // changed while a worker holds it
  EXPECT_EQ(q.Len(), 0u) << "not handed to a second worker";
  EXPECT_EQ(q.GetFor(std::chrono::milliseconds(20)), std::nullopt);
  q.Done("a");
  EXPECT_EQ(q.Len(), 1u);
  EXPECT_EQ(q.Get(), "a");
  q.Done("a");
  EXPECT_EQ(q.Len(), 0u);
}

TEST(WorkQueue, NoKeyIsProcessedByTwoWorkersAtOnce) {
  WorkQueue q;
  std::atomic<int> inside{0}, max_inside{0}, processed{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w)
    workers.emplace_back([&] {
      while (auto key = q.Get()) {
        int n = ++inside;
        int m = max_inside;
        while (n > m && !max_inside.compare_exchange_weak(m, n)) {
        }
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        --inside;
        ++processed;
        q.Done(*key);
      }
    });
  for (int i = 0; i < 300; ++i) {
    q.Add("same");
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (q.Len() > 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  q.ShutDown();
  for (auto& t : workers) t.join();
  EXPECT_EQ(max_inside.load(), 1);
  EXPECT_GT(processed.load(), 1);
}

TEST(WorkQueue, AddAfterAndRateLimited) {
  WorkQueue q;
  auto start = std::chrono::steady_clock::now();
  q.AddAfter("late", 0.05);
  q.Add("now");
  EXPECT_EQ(q.Get(), "now");
  q.Done("now");
  EXPECT_EQ(q.Get(), "late");
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(50));
  q.Done("late");

  q.AddRateLimited("retry");  // 5 ms
  q.AddRateLimited("retry");  // 10 ms
  EXPECT_EQ(q.Retries("retry"), 2);
  EXPECT_EQ(q.Get(), "retry");
  q.Forget("retry");
  EXPECT_EQ(q.Retries("retry"), 0);
}

TEST(WorkQueue, ShutDownWakesWaiters) {
  WorkQueue q;
  std::thread waiter([&] { EXPECT_EQ(q.Get(), std::nullopt); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  q.ShutDown();
  waiter.join();
  q.Add("ignored");
  EXPECT_EQ(q.Len(), 0u);
}

TEST(WorkQueue, HooksCountAddsRetriesAndDepth) {
  int adds = 0, retries = 0;
  size_t depth = 0;
  WorkQueue q(RateLimits{}, {[&] { ++adds; }, [&] { ++retries; }, [&](size_t d) { depth = d; }});
  q.Add("a");
  q.Add("b");
  EXPECT_EQ(depth, 2u);
  q.AddRateLimited("c");
  EXPECT_EQ(retries, 1);
  EXPECT_EQ(adds, 2);
}

}  // namespace
}  // namespace hetermoe::op
