#include "trainer/parallel/launcher.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "common/error.h"

namespace hetermoe::parallel {
namespace {

std::vector<pid_t> g_children;

void ForwardSignal(int sig) {
  for (pid_t p : g_children)
    if (p > 0) ::kill(p, sig);
}

volatile sig_atomic_t g_stop_signal = 0;

// SIGINT/SIGTERM to the launcher: remembered, and passed to every rank.
void OnStopSignal(int sig) {
  g_stop_signal = sig;
  ForwardSignal(sig);
}

int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(fd);
    throw Error("local launcher: cannot find a free port for the rendezvous");
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string Describe(int status) {
  if (WIFEXITED(status)) return "exit status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return std::string("signal ") + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")";
  return "status " + std::to_string(status);
}

}  // namespace

bool IsLaunchedChild() {
  const char* v = std::getenv("HETERMOE_LAUNCHED");
  return v && std::string(v) == "1";
}

LaunchResult LaunchLocal(int world_size, const std::vector<std::string>& argv) {
  const int port = FreePort();
  const pid_t launcher = ::getpid();
  g_children.assign(world_size, -1);
  for (int r = 0; r < world_size; ++r) {
    const pid_t pid = ::fork();
    if (pid < 0) throw Error("local launcher: fork failed: " + std::string(std::strerror(errno)));
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != launcher) ::_exit(1);  // the launcher died already
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);  // every rank is on this machine: GPU r % count
      ::setenv("WORLD_SIZE", std::to_string(world_size).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      ::setenv("HETERMOE_LAUNCHED", "1", 1);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv("/proc/self/exe", args.data());
      std::fprintf(stderr, "local launcher: exec failed: %s\n", std::strerror(errno));
      ::_exit(127);
    }
    g_children[r] = pid;
  }
  g_stop_signal = 0;
  struct sigaction sa {};
  sa.sa_handler = OnStopSignal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  LaunchResult result;
  int alive = world_size;
  while (alive > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;
    }
    int rank = -1;
    for (int r = 0; r < world_size; ++r)
      if (g_children[r] == pid) rank = r;
    if (rank < 0) continue;
    g_children[rank] = -1;
    --alive;
    const bool failed = !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (failed && result.ok && g_stop_signal == 0) {
      result.ok = false;
      result.message = "rank " + std::to_string(rank) + " (pid " + std::to_string(pid) + ") failed: " +
                       Describe(status) + "; stopped the other ranks";
      ForwardSignal(SIGTERM);
      // Grace period, then no mercy: a rank stuck in a collective must not hang us.
      std::thread([] {
        std::this_thread::sleep_for(std::chrono::seconds(5));
        ForwardSignal(SIGKILL);
      }).detach();
    }
  }
  ::signal(SIGINT, SIG_DFL);
  ::signal(SIGTERM, SIG_DFL);
  if (g_stop_signal != 0) {
    result.ok = false;
    result.stopped_by_signal = g_stop_signal;
    result.message = std::string("stopped by ") + strsignal(g_stop_signal) + "; so were the ranks";
  }
  return result;
}

}  // namespace hetermoe::parallel
