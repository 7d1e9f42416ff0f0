// How many threads a process trains with when train.threads is 0: the CPUs
// it may really use, not the machine's. In a Kubernetes pod that is the
// container's CPU limit (a cgroup CPU quota) and its cpuset (the affinity
// mask), not the node's core count; OMP_NUM_THREADS, when set, is the user's
// word and wins. Ranks the local launcher started on one machine share it.
//
// DefaultThreads is pure; ReadCpuLimits reads the process's affinity,
// /sys/fs/cgroup (v2 cpu.max, else v1 cpu.cfs_quota_us/cpu.cfs_period_us)
// and the environment.
#pragma once

#include <optional>
#include <string>

namespace hetermoe::run {

struct CpuLimits {
  int affinity_cpus = 1;              // CPUs in the affinity mask (the cpuset)
  std::optional<double> quota_cpus;   // cgroup quota / period; nullopt = no limit
  std::optional<int> omp_num_threads; // OMP_NUM_THREADS, when a positive integer
};

// >= 1. `sharing` = ranks of a local launch on this machine (1 otherwise).
int DefaultThreads(const CpuLimits& limits, int sharing);

// The quota in CPUs from cgroup v2's cpu.max text ("max 100000" = none,
// "150000 100000" = 1.5); nullopt when unlimited or unreadable.
std::optional<double> ParseCpuMax(const std::string& text);

CpuLimits ReadCpuLimits();

}  // namespace hetermoe::run
