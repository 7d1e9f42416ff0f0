// The collectives over real TCP connections: each rank of a small world runs
// in its own thread with its own World, as separate processes would.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <numeric>
#include <thread>

#include "common/error.h"
#include "tests/support/loopback.h"
#include "trainer/comm/communicator.h"
#include "trainer/comm/tcp_store.h"

namespace hetermoe::comm {
namespace {

using hetermoe::testing::FreeLoopbackPort;

// Runs fn(world) on `n` ranks at once; rethrows the first failure.
void OnRanks(int n, const std::function<void(World&)>& fn, int timeout_ms = 10000) {
  const int port = FreeLoopbackPort();
  std::vector<std::thread> threads;
  std::vector<std::string> errors(n);
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        RendezvousOptions o;
        o.master_port = port;
        o.world_size = n;
        o.rank = r;
        o.timeout = std::chrono::milliseconds(timeout_ms);
        World w(o);
        fn(w);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < n; ++r) ASSERT_EQ(errors[r], "") << "rank " << r;
}

TEST(TcpStore, SetGetAndWaitAcrossClients) {
  TcpStoreServer server("127.0.0.1", 0);
  TcpStore a("127.0.0.1", server.port(), std::chrono::seconds(5));
  TcpStore b("127.0.0.1", server.port(), std::chrono::seconds(5));
  std::thread later([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    a.set("key", {'h', 'i'});
  });
  EXPECT_EQ(b.get("key"), (std::vector<char>{'h', 'i'}));  // waits for the set
  later.join();
  EXPECT_THROW(b.wait({"never"}, std::chrono::milliseconds(200)), Error);
}

TEST(Communicator, PointToPointAllReduceAndAllToAllV) {
  OnRanks(3, [](World& w) {
    auto c = w.Group("all", {0, 1, 2});
    const int me = c->rank();
    // Ring: send my rank to the next, receive from the previous.
    int64_t out = 100 + me, in = -1;
    auto s = c->Isend(&out, sizeof out, (me + 1) % 3, 7);
    auto r = c->Irecv(&in, sizeof in, (me + 2) % 3, 7);
    r->Wait();
    s->Wait();
    EXPECT_EQ(in, 100 + (me + 2) % 3);
    // A message to oneself is a local copy.
    float self_out = 3.5f, self_in = 0;
    c->Isend(&self_out, sizeof self_out, me, 9)->Wait();
    c->Irecv(&self_in, sizeof self_in, me, 9)->Wait();
    EXPECT_EQ(self_in, 3.5f);
    std::vector<float> v = {1.0f * me, 2.0f};
    c->AllReduceSum(v.data(), v.size());
    EXPECT_EQ(v, (std::vector<float>{3.0f, 6.0f}));
    // Rank p sends p+1 floats of value 10*me+p to every rank p (unequal splits).
    std::vector<size_t> send_counts = {1, 2, 3}, recv_counts(3, me + 1);
    std::vector<float> send, recv(3 * (me + 1));
    for (int p = 0; p < 3; ++p) send.insert(send.end(), p + 1, 10.0f * me + p);
    c->AllToAllV(send.data(), send_counts, recv.data(), recv_counts, 11);
    for (int p = 0; p < 3; ++p)
      for (int i = 0; i < me + 1; ++i) EXPECT_EQ(recv[p * (me + 1) + i], 10.0f * p + me);
  });
}

TEST(Communicator, SubgroupsConnectOnlyTheirMembers) {
  OnRanks(4, [](World& w) {
    const std::vector<int> pair = w.rank() < 2 ? std::vector<int>{0, 1} : std::vector<int>{2, 3};
    auto c = w.Group(w.rank() < 2 ? "low" : "high", pair);
    double x = w.rank();
    c->AllReduceSum(&x, 1);
    EXPECT_EQ(x, w.rank() < 2 ? 1.0 : 5.0);
    EXPECT_EQ(c->GlobalRank(1), pair[1]);
  });
}

TEST(Communicator, ASilentPeerIsAnErrorNamingIt) {
  const int port = FreeLoopbackPort();
  std::string error;
  std::thread quiet([&] {
    RendezvousOptions o;
    o.master_port = port;
    o.world_size = 2;
    o.rank = 1;
    o.timeout = std::chrono::milliseconds(1500);
    World w(o);
    auto c = w.Group("g", {0, 1});
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // never sends
  });
  {
    RendezvousOptions o;
    o.master_port = port;
    o.world_size = 2;
    o.rank = 0;
    o.timeout = std::chrono::milliseconds(1500);
    World w(o);
    auto c = w.Group("g", {0, 1});
    int x = 0;
    try {
      c->Irecv(&x, sizeof x, 1, 3)->Wait();
    } catch (const Error& e) {
      error = e.what();
    }
  }
  quiet.join();
  EXPECT_NE(error.find("receive from rank 1 failed"), std::string::npos) << error;
}

}  // namespace
}  // namespace hetermoe::comm
