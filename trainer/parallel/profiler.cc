#include "trainer/parallel/profiler.h"

#include <algorithm>
#include <chrono>
#include <random>
#include <vector>

#include "trainer/ops/experts.h"

namespace hetermoe::parallel {
namespace {

using Clock = std::chrono::steady_clock;

// Median of a few repetitions after one warm-up, in seconds.
template <typename Fn>
double Time(Fn fn) {
  fn();
  std::vector<double> t;
  for (int i = 0; i < 3; ++i) {
    const auto t0 = Clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[1];
}

// Seconds to run `experts` experts of layer 0 (each on `rows` rows) forward,
// through an expert block of the device (what an owner runs).
double ExpertSeconds(model::StageDevice& device, const io::MixtralConfig& c, int64_t experts, int64_t rows) {
  const int64_t E = c.num_local_experts;
  ops::DispatchPlan plan;
  plan.experts = E;
  plan.slots = 1;
  plan.tokens = rows * experts;
  plan.counts.assign(E, 0);
  for (int64_t e = 0; e < experts; ++e) plan.counts[e] = rows;
  plan.offsets.assign(E + 1, 0);
  for (int64_t e = 0; e < E; ++e) plan.offsets[e + 1] = plan.offsets[e] + plan.counts[e];
  const std::vector<float> xp(plan.tokens * c.hidden_size, 0.01f);
  const auto block = device.NewExpertBlock();
  return Time([&] { block->Forward(0, plan, 0, experts, xp.data()); });
}

int64_t RowsPerExpert(const io::MixtralConfig& c, int64_t micro_batch, int64_t seq_len, int attention_ranks) {
  return std::max<int64_t>(1, attention_ranks * micro_batch * seq_len * c.num_experts_per_tok / c.num_local_experts);
}

}  // namespace

LayerTimes ProfileAttentionRank(model::StageDevice& device, const io::MixtralConfig& c, int64_t micro_batch,
                                int64_t seq_len, int attention_ranks, double attention_factor,
                                double experts_factor) {
  const int64_t N = micro_batch * seq_len;
  std::vector<int32_t> tokens(N);
  std::mt19937 rng(5);
  for (auto& t : tokens) t = static_cast<int32_t>(rng() % c.vocab_size);
  const auto m = device.NewMicroBatch();
  m->EmbedForward({tokens.data(), tokens.data(), micro_batch, seq_len});
  LayerTimes t;
  t.attention_seconds = attention_factor * Time([&] { m->AttentionForward(0); });
  t.offloaded_expert_seconds =
      experts_factor * ExpertSeconds(device, c, 1, RowsPerExpert(c, micro_batch, seq_len, attention_ranks));
  return t;
}

LayerTimes ProfileExpertRank(model::StageDevice& device, const io::MixtralConfig& c, int64_t micro_batch,
                             int64_t seq_len, int attention_ranks, int64_t experts_held, double experts_factor) {
  LayerTimes t;
  t.expert_rank_seconds =
      experts_factor * ExpertSeconds(device, c, experts_held, RowsPerExpert(c, micro_batch, seq_len, attention_ranks));
  return t;
}

}  // namespace hetermoe::parallel
