// bench_planner: how long the planner takes, and how much memory it needs,
// as the cluster grows to 10,000 GPUs of four kinds (the bar: a plan
// in under a second, memory growing linearly).
//
// The inventory is built in memory: equal numbers of H100, A100-80GB, V100
// and T4 on 8-GPU nodes, with NICs of their generation (H100 8x400 Gb/s,
// A100 8x200, V100 200, T4 100). The model is Mixtral-style, 16 layers,
// d 2048, 32 experts of width 5632, top-2, 4K-token sequences,
// one sequence per step per GPU. Heap use is counted by replacing the
// global operator new/delete in this binary (peak live bytes during one
// MakePlan call, including the plan it returns).
//
//   bench_planner [--repeat N]      exit status 1 if the 10,000-GPU plan takes 1 s or more
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "planner/plan_json.h"
#include "planner/planner.h"

namespace {

std::atomic<long long> live_bytes{0};
std::atomic<long long> peak_bytes{0};

void Count(long long delta) {
  const long long now = live_bytes.fetch_add(delta) + delta;
  long long peak = peak_bytes.load();
  while (now > peak && !peak_bytes.compare_exchange_weak(peak, now)) {
  }
}

}  // namespace

// Each block carries its size in a 16-byte header so delete can count it.
void* operator new(std::size_t size) {
  void* raw = std::malloc(size + 16);
  if (raw == nullptr) throw std::bad_alloc();
  *static_cast<std::size_t*>(raw) = size;
  Count(static_cast<long long>(size));
  return static_cast<char*>(raw) + 16;
}
void operator delete(void* p) noexcept {
  if (p == nullptr) return;
  void* raw = static_cast<char*>(p) - 16;
  Count(-static_cast<long long>(*static_cast<std::size_t*>(raw)));
  std::free(raw);
}
void operator delete(void* p, std::size_t) noexcept { operator delete(p); }
void* operator new[](std::size_t size) { return operator new(size); }
void operator delete[](void* p) noexcept { operator delete(p); }
void operator delete[](void* p, std::size_t) noexcept { operator delete(p); }

namespace {

namespace planner = hetermoe::planner;

planner::Inventory Cluster(int gpus) {
  struct Kind {
    const char* gpu;
    const char* prefix;
    double nic_gbps;
  };
  const Kind kinds[] = {{"H100", "h100", 3200}, {"A100-80GB", "a100", 1600}, {"V100", "v100", 200}, {"T4", "t4", 100}};
  planner::Inventory inventory;
  inventory.source = "bench";
  for (const Kind& k : kinds) {
    for (int left = gpus / 4, i = 0; left > 0; left -= 8, ++i) {
      inventory.nodes.push_back({std::string(k.prefix) + "-" + std::to_string(i), k.gpu, std::min(left, 8), k.nic_gbps});
    }
  }
  return inventory;
}

planner::ModelShape Model() {
  planner::ModelShape m;
  m.layers = 16;
  m.hidden = 2048;
  m.ffn = 5632;
  m.heads = 16;
  m.kv_heads = 4;
  m.head_dim = 128;
  m.experts = 32;
  m.top_k = 2;
  m.vocab = 32000;
  m.max_positions = 32768;
  m.source = "bench-moe-16x2048x32";
  return m;
}

struct Measurement {
  double best_seconds = 1e30;
  double median_seconds = 0;
  long long peak_bytes = 0;
  planner::Plan plan;
};

Measurement Measure(int gpus, int repeat, const planner::GpuProfileTable& profiles) {
  planner::PlanRequest request;
  request.inventory = Cluster(gpus);
  request.model = Model();
  request.seq_len = 4096;
  request.global_batch = gpus;
  Measurement m;
  std::vector<double> times;
  for (int r = 0; r < repeat; ++r) {
    const long long before = live_bytes.load();
    peak_bytes.store(before);
    const auto start = std::chrono::steady_clock::now();
    planner::Plan plan = planner::MakePlan(request, profiles);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    times.push_back(seconds);
    m.peak_bytes = std::max(m.peak_bytes, peak_bytes.load() - before);
    if (r + 1 == repeat) m.plan = std::move(plan);
  }
  std::sort(times.begin(), times.end());
  m.best_seconds = times.front();
  m.median_seconds = times[times.size() / 2];
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  int repeat = 5;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--repeat") == 0) repeat = std::max(1, std::atoi(argv[i + 1]));
  }
  const planner::GpuProfileTable profiles = planner::GpuProfileTable::Builtin();
  std::printf("bench_planner: MakePlan on H100/A100-80GB/V100/T4 in equal parts, %s, 4K tokens, "
              "median of %d\n\n", Model().source.c_str(), repeat);
  std::printf("%8s %12s %12s %14s %12s %8s %8s %14s\n", "GPUs", "median ms", "best ms", "peak heap MiB",
              "bytes/GPU", "groups", "unused", "tokens/s");
  double ten_thousand = 0;
  for (int gpus : {1250, 2500, 5000, 10000, 20000}) {
    const Measurement m = Measure(gpus, repeat, profiles);
    std::printf("%8d %12.1f %12.1f %14.2f %12.0f %8zu %8zu %14.3g\n", gpus, 1e3 * m.median_seconds,
                1e3 * m.best_seconds, m.peak_bytes / 1048576.0, static_cast<double>(m.peak_bytes) / gpus,
                m.plan.groups.size(), m.plan.unused.size(), m.plan.predicted.tokens_per_second);
    if (gpus == 10000) ten_thousand = m.median_seconds;
  }
  const bool ok = ten_thousand < 1.0;
  std::printf("\n10,000 GPUs: %.1f ms %s (bar: under 1 s)\n", 1e3 * ten_thousand, ok ? "OK" : "TOO SLOW");
  return ok ? 0 : 1;
}
