// The local launcher (`parallel.launch: local`): runs every rank of a job as a
// process on this machine, like `torchrun --standalone`.
//
// Each child is this same program with the same arguments, plus the
// environment a Kubernetes pod would get (RANK, WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT) and HETERMOE_LAUNCHED=1. Rank 0 draws the one progress bar.
// SIGINT/SIGTERM are forwarded to the children; when any rank fails, the
// others are stopped (SIGTERM, then SIGKILL after a grace period) and the
// launcher exits non-zero naming the rank. Children die with the launcher
// (PR_SET_PDEATHSIG), so nothing is orphaned.
#pragma once

#include <string>
#include <vector>

namespace hetermoe::parallel {

struct LaunchResult {
  bool ok = true;
  std::string message;         // why not, naming the rank
  int stopped_by_signal = 0;   // SIGINT/SIGTERM the launcher got (and passed on), else 0
};

// argv: the full command line to re-run (argv[0] is ignored: /proc/self/exe).
LaunchResult LaunchLocal(int world_size, const std::vector<std::string>& argv);

// True in a process started by LaunchLocal.
bool IsLaunchedChild();

}  // namespace hetermoe::parallel
