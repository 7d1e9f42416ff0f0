// The CPUs a process may use: see cpu_budget.h.
#include "trainer/run/cpu_budget.h"

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

namespace hetermoe::run {

int DefaultThreads(const CpuLimits& limits, int sharing) {
  if (limits.omp_num_threads) return std::max(1, *limits.omp_num_threads);
  double cpus = std::max(1, limits.affinity_cpus);
  if (limits.quota_cpus) cpus = std::min(cpus, *limits.quota_cpus);
  // A quota of 1.5 CPUs runs 2 threads; sharing rounds down, never below 1.
  const int usable = std::max(1, static_cast<int>(std::ceil(cpus - 1e-9)));
  return std::max(1, usable / std::max(1, sharing));
}

std::optional<double> ParseCpuMax(const std::string& text) {
  std::istringstream in(text);
  std::string quota;
  double period = 0;
  if (!(in >> quota >> period) || quota == "max" || period <= 0) return std::nullopt;
  try {
    size_t used = 0;
    const double q = std::stod(quota, &used);
    if (used != quota.size() || q <= 0) return std::nullopt;
    return q / period;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

namespace {

std::string ReadFile(const char* path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::optional<double> CgroupQuota() {
  if (auto v2 = ParseCpuMax(ReadFile("/sys/fs/cgroup/cpu.max"))) return v2;
  // cgroup v1: the same two numbers in two files (quota -1 = none).
  return ParseCpuMax(ReadFile("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") + " " +
                     ReadFile("/sys/fs/cgroup/cpu/cpu.cfs_period_us"));
}

}  // namespace

CpuLimits ReadCpuLimits() {
  CpuLimits limits;
  cpu_set_t set;
  CPU_ZERO(&set);
  limits.affinity_cpus = ::sched_getaffinity(0, sizeof set, &set) == 0
                             ? CPU_COUNT(&set)
                             : static_cast<int>(std::thread::hardware_concurrency());
  limits.quota_cpus = CgroupQuota();
  if (const char* v = std::getenv("OMP_NUM_THREADS"); v && *v) {
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    if (end && *end == '\0' && n > 0) limits.omp_num_threads = static_cast<int>(n);
  }
  return limits;
}

}  // namespace hetermoe::run
