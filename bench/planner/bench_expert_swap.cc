// bench_expert_swap: HierMoE's expert swap decision (planner/expert_swap.h)
// on a skewed router, without and with swaps, in the same run.
//
// One MoE layer of a fine-grained model: 64 experts, top-6, 16,384 tokens
// per step, 8 expert ranks holding 8 experts each (contiguous, as placed).
// Expert popularity follows a Zipf law (s = 1.1, a few hot experts), and
// each token draws its 6 distinct experts by popularity. Each "step" routes
// fresh tokens from the same router, then applies the best swap; the bench
// prints the busiest rank's deduplicated rows, max/mean, the dispatch time
// they imply on a 100 Gb/s link (d 2048, bf16 rows), and what the decision
// costs on this CPU against the dispatch time it saves.
//
//   bench_expert_swap [--steps 8]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "planner/expert_swap.h"

namespace {

using hetermoe::planner::BestSwap;
using hetermoe::planner::DeduplicatedRows;
using hetermoe::planner::LayerRouting;

constexpr int64_t kExperts = 64, kTopK = 6, kTokens = 16384;
constexpr int kRanks = 8;
constexpr double kRowBytes = 2048 * 2.0, kLinkBytesPerSecond = 100e9 / 8;

LayerRouting Route(const std::vector<double>& popularity, std::mt19937_64& rng) {
  LayerRouting r{kExperts, kTopK, {}};
  r.chosen.reserve(kTokens * kTopK);
  for (int64_t t = 0; t < kTokens; ++t) {
    std::vector<double> w = popularity;
    for (int64_t i = 0; i < kTopK; ++i) {
      std::discrete_distribution<int> pick(w.begin(), w.end());
      const int e = pick(rng);
      r.chosen.push_back(e);
      w[e] = 0;
    }
  }
  return r;
}

struct Load {
  int64_t busiest;
  double imbalance, dispatch_ms;
};

Load Measure(const LayerRouting& routing, const std::vector<int>& owner) {
  const std::vector<int64_t> rows = DeduplicatedRows(routing, owner, kRanks);
  const int64_t busiest = *std::max_element(rows.begin(), rows.end());
  const double mean = static_cast<double>(std::accumulate(rows.begin(), rows.end(), int64_t{0})) / kRanks;
  return {busiest, static_cast<double>(busiest) / mean, 1e3 * static_cast<double>(busiest) * kRowBytes / kLinkBytesPerSecond};
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 8;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--steps") && i + 1 < argc) {
      steps = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--steps N]\n", argv[0]);
      return 2;
    }
  }
  std::vector<double> popularity(kExperts);
  for (int64_t e = 0; e < kExperts; ++e) popularity[e] = 1.0 / std::pow(static_cast<double>(e + 1), 1.1);
  std::vector<int> placed(kExperts);
  for (int64_t e = 0; e < kExperts; ++e) placed[e] = static_cast<int>(e * kRanks / kExperts);
  std::vector<int> swapped = placed;
  std::mt19937_64 rng(5);
  std::printf("expert swap on a skewed router: %lld experts (Zipf 1.1), top-%lld, %lld tokens per step, %d ranks\n",
              static_cast<long long>(kExperts), static_cast<long long>(kTopK), static_cast<long long>(kTokens), kRanks);
  std::printf("dispatch = busiest rank's deduplicated rows x %.0f bytes at %.1f GB/s\n\n", kRowBytes,
              kLinkBytesPerSecond / 1e9);
  std::printf("%5s | %12s %9s %11s | %12s %9s %11s | %10s %8s\n", "step", "busiest (no)", "max/mean", "dispatch ms",
              "busiest (sw)", "max/mean", "dispatch ms", "decide ms", "swap");
  double decide_total = 0, saved_total = 0;
  for (int s = 1; s <= steps; ++s) {
    const LayerRouting routing = Route(popularity, rng);
    const Load without = Measure(routing, placed), with = Measure(routing, swapped);
    const auto t0 = std::chrono::steady_clock::now();
    const auto choice = BestSwap(routing, swapped, kRanks);
    const double decide_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (choice.a >= 0) std::swap(swapped[choice.a], swapped[choice.b]);
    decide_total += decide_ms;
    saved_total += without.dispatch_ms - with.dispatch_ms;
    char swap[32] = "none";
    if (choice.a >= 0) std::snprintf(swap, sizeof swap, "%d<->%d", choice.a, choice.b);
    std::printf("%5d | %12lld %9.3f %11.3f | %12lld %9.3f %11.3f | %10.2f %8s\n", s,
                static_cast<long long>(without.busiest), without.imbalance, without.dispatch_ms,
                static_cast<long long>(with.busiest), with.imbalance, with.dispatch_ms, decide_ms, swap);
  }
  std::printf("\nover %d steps: dispatch time saved %.3f ms per layer per pass, decisions took %.2f ms "
              "(one CPU core, the whole layer's routing)\n",
              steps, saved_total, decide_total);
  return 0;
}
