#include "trainer/dist/profiler.h"

#include <algorithm>
#include <chrono>
#include <random>
#include <vector>

#include "trainer/model/mixtral.h"
#include "trainer/ops/experts.h"

namespace hetermoe::dist {
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

// Seconds to run `experts` experts (each on `rows` rows) forward.
double ExpertSeconds(const io::MixtralConfig& c, const model::ParameterLayout& layout,
                     const std::vector<float>& params, int64_t experts, int64_t rows) {
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  ops::DispatchPlan plan;
  plan.experts = experts;
  plan.slots = 1;
  plan.tokens = rows * experts;
  plan.counts.assign(experts, rows);
  plan.offsets.resize(experts + 1);
  for (int64_t e = 0; e <= experts; ++e) plan.offsets[e] = e * rows;
  std::vector<ops::ExpertWeights> w;
  for (int64_t e = 0; e < experts; ++e) {
    const auto& eo = layout.layers[0].experts[e % c.num_local_experts];
    w.push_back({params.data() + eo.w1, params.data() + eo.w2, params.data() + eo.w3});
  }
  std::vector<float> xp(plan.tokens * d, 0.01f);
  ops::ExpertActivations acts;
  return Time([&] { ops::ExpertsForward(plan, d, f, 0, w, xp.data(), &acts); });
}

std::vector<float> RandomParams(const model::ParameterLayout& layout, const io::MixtralConfig& c) {
  std::vector<float> p(layout.total());
  model::InitParameters(layout, c.initializer_range, 1, p.data());
  return p;
}

}  // namespace

LayerTimes ProfileAttentionRank(const io::MixtralConfig& c, const model::ParameterLayout& layout,
                                int64_t micro_batch, int64_t seq_len, int attention_ranks,
                                double attention_factor, double experts_factor) {
  const std::vector<float> params = RandomParams(layout, c);
  const int64_t N = micro_batch * seq_len;
  std::vector<int32_t> tokens(N);
  std::mt19937 rng(5);
  for (auto& t : tokens) t = static_cast<int32_t>(rng() % c.vocab_size);
  model::MixtralCpu m(c, layout);
  m.EmbedForward(params.data(), {tokens.data(), tokens.data(), micro_batch, seq_len});
  LayerTimes t;
  t.attention_seconds = attention_factor * Time([&] { m.AttentionForward(params.data(), 0); });
  const int64_t rows = std::max<int64_t>(1, attention_ranks * N * c.num_experts_per_tok / c.num_local_experts);
  t.offloaded_expert_seconds = experts_factor * ExpertSeconds(c, layout, params, 1, rows);
  return t;
}

LayerTimes ProfileExpertRank(const io::MixtralConfig& c, const model::ParameterLayout& layout,
                             int64_t micro_batch, int64_t seq_len, int attention_ranks,
                             int64_t experts_held, double experts_factor) {
  const std::vector<float> params = RandomParams(layout, c);
  const int64_t N = micro_batch * seq_len;
  const int64_t rows = std::max<int64_t>(1, attention_ranks * N * c.num_experts_per_tok / c.num_local_experts);
  LayerTimes t;
  t.expert_rank_seconds = experts_factor * ExpertSeconds(c, layout, params, experts_held, rows);
  return t;
}

}  // namespace hetermoe::dist
