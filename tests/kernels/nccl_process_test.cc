// NcclCommunicator between processes, one per rank (nccl_peer.cc), as a job
// runs them: on the emulator (its NCCL connects processes over TCP) and on a
// machine with as many GPUs as ranks. Each test starts the ranks, waits for
// all of them and checks their exit status and what they printed.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/device.h"
#include "trainer/comm/nccl_communicator.h"

extern char** environ;

namespace hetermoe::comm {
namespace {

struct Outcome {
  int status = -1;
  std::string output;
};

std::string Hex(const NcclId& id) {
  std::string s;
  char b[3];
  for (char c : id) {
    std::snprintf(b, sizeof b, "%02x", static_cast<unsigned char>(c));
    s += b;
  }
  return s;
}

// Runs `ranks` nccl_peer processes on one fresh id; returns each one's outcome.
std::vector<Outcome> RunRanks(int ranks, const std::string& scenario, int timeout_ms) {
  const std::string id = Hex(NewNcclId());
  std::vector<pid_t> pids(ranks);
  std::vector<std::string> logs(ranks);
  for (int r = 0; r < ranks; ++r) {
    logs[r] = ::testing::TempDir() + "nccl_peer_" + scenario + "_" + std::to_string(r) + ".log";
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, logs[r].c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    const std::string rank = std::to_string(r), n = std::to_string(ranks), t = std::to_string(timeout_ms);
    std::vector<char*> argv = {const_cast<char*>(HETERMOE_NCCL_PEER), const_cast<char*>(id.c_str()),
                               const_cast<char*>(rank.c_str()), const_cast<char*>(n.c_str()),
                               const_cast<char*>(scenario.c_str()), const_cast<char*>(t.c_str()), nullptr};
    EXPECT_EQ(posix_spawn(&pids[r], HETERMOE_NCCL_PEER, &actions, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&actions);
  }
  std::vector<Outcome> out(ranks);
  for (int r = 0; r < ranks; ++r) {
    int status = 0;
    waitpid(pids[r], &status, 0);
    out[r].status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::ifstream in(logs[r]);
    std::stringstream ss;
    ss << in.rdbuf();
    out[r].output = ss.str();
  }
  return out;
}

int Gpus(std::string* why) { return kernels::CudaDeviceCount(why); }

TEST(NcclProcesses, ThreeProcessesExchangeAndReduce) {
  std::string why;
  if (const int n = Gpus(&why); n < 3) GTEST_SKIP() << "needs 3 GPUs, found " << n << " " << why;
  const auto out = RunRanks(3, "exchange", 30000);
  for (size_t r = 0; r < out.size(); ++r) {
    EXPECT_EQ(out[r].status, 0) << "rank " << r << ": " << out[r].output;
    EXPECT_NE(out[r].output.find("ok"), std::string::npos) << out[r].output;
  }
}

TEST(NcclProcesses, ADeadProcessIsAnErrorNamingItWithinTheTimeout) {
  std::string why;
  if (const int n = Gpus(&why); n < 2) GTEST_SKIP() << "needs 2 GPUs, found " << n << " " << why;
  const auto t0 = std::chrono::steady_clock::now();
  const auto out = RunRanks(2, "die", 3000);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(out[1].status, 3) << out[1].output;
  EXPECT_EQ(out[0].status, 0) << out[0].output;
  EXPECT_NE(out[0].output.find("receive of 4 fp32 from rank 1"), std::string::npos) << out[0].output;
  EXPECT_LT(seconds, 3.0 + 5.0) << "the error came after the timeout";
}

// A planted bug: each rank sends a large message before receiving one, on
// one stream and outside a group. NCCL runs the send until the peer's
// receive runs, which comes after the peer's own send: a deadlock, which
// must end in the timeout error naming the send, on both ranks.
TEST(NcclProcesses, UngroupedLargeExchangeDeadlocksIntoAnErrorNamingTheSend) {
  std::string why;
  if (const int n = Gpus(&why); n < 2) GTEST_SKIP() << "needs 2 GPUs, found " << n << " " << why;
  const auto out = RunRanks(2, "ungrouped", 1500);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(out[r].status, 0) << "rank " << r << ": " << out[r].output;
    EXPECT_NE(out[r].output.find("send of 1048576 fp32 to rank " + std::to_string(1 - r)), std::string::npos)
        << out[r].output;
  }
}

}  // namespace
}  // namespace hetermoe::comm
