// CPU tests of what the CUDA backend shares with the CPU backend or keeps as
// pure host logic; they run on every machine, GPU or not.
//
//  - kernels/shared/*.h: each element-wise or per-row formula is checked
//    against an independent derivation (finite differences of the forward,
//    a sort-based top-k, the textbook AdamW), and the CPU ops that call the
//    helpers are checked to agree with them, so the CPU golden tests
//    (against PyTorch) vouch for the code the GPU runs.
//  - kernels/caching_allocator.h with an in-memory backing that can fail.
//  - kernels/precision.h: the policy table per GPU generation, loss scaling.
//
// Tolerances: fp32 formulas vs finite differences (step 1e-3, central):
// 2e-3 relative; identities (same code on both sides): exact.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "common/error.h"
#include "kernels/caching_allocator.h"
#include "kernels/embedding_plan.h"
#include "kernels/precision.h"
#include "kernels/shared/math.h"
#include "kernels/shared/router_row.h"
#include "trainer/ops/cross_entropy.h"
#include "trainer/ops/rmsnorm.h"
#include "trainer/ops/router.h"
#include "trainer/optim/adamw.h"

namespace hetermoe {
namespace {

constexpr float kFdStep = 1e-3f;
constexpr float kFdRelTol = 2e-3f;

std::vector<float> RandomVector(size_t n, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

void ExpectNearRel(double actual, double expected, double rel, const std::string& what) {
  EXPECT_NEAR(actual, expected, rel * std::max(1.0, std::abs(expected))) << what;
}

// --- element-wise formulas ---------------------------------------------------

TEST(SharedMath, SwiGluBackwardMatchesFiniteDifferences) {
  for (float g1 : {-3.0f, -0.5f, 0.0f, 0.7f, 2.5f}) {
    for (float g3 : {-1.5f, 0.3f, 2.0f}) {
      float dg1 = 0, dg3 = 0;
      math::SwiGluBackward(g1, g3, 1.0f, dg1, dg3);
      const float fd1 = (math::SwiGlu(g1 + kFdStep, g3) - math::SwiGlu(g1 - kFdStep, g3)) / (2 * kFdStep);
      const float fd3 = (math::SwiGlu(g1, g3 + kFdStep) - math::SwiGlu(g1, g3 - kFdStep)) / (2 * kFdStep);
      ExpectNearRel(dg1, fd1, kFdRelTol, "dg1");
      ExpectNearRel(dg3, fd3, kFdRelTol, "dg3");
    }
  }
}

TEST(SharedMath, SwiGluIsSiluTimesUp) {
  // silu(x) = x / (1 + e^-x), written out independently.
  for (float x : {-4.0f, -1.0f, 0.0f, 0.5f, 3.0f})
    EXPECT_FLOAT_EQ(math::SwiGlu(x, 2.0f), 2.0f * x / (1.0f + std::exp(-x)));
}

TEST(SharedMath, RmsNormOpMatchesFormulaAndFiniteDifferences) {
  const int64_t N = 3, d = 7;
  const float eps = 1e-5f;
  const auto x = RandomVector(N * d, 1), w = RandomVector(d, 2), dy = RandomVector(N * d, 3);
  std::vector<float> y(N * d), rstd(N);
  ops::RmsNormForward(N, d, x.data(), w.data(), eps, y.data(), rstd.data());
  for (int64_t i = 0; i < N; ++i) {
    double ss = 0;
    for (int64_t j = 0; j < d; ++j) ss += double{x[i * d + j]} * x[i * d + j];
    EXPECT_NEAR(rstd[i], 1.0 / std::sqrt(ss / d + eps), 1e-5 * rstd[i]);
  }
  // Backward vs finite differences of L = sum(dy * y).
  std::vector<float> dx(N * d, 0.0f), dw(d, 0.0f);
  ops::RmsNormBackward(N, d, dy.data(), x.data(), w.data(), rstd.data(), dx.data(), dw.data());
  auto loss = [&](const std::vector<float>& xs, const std::vector<float>& ws) {
    std::vector<float> ys(N * d), rs(N);
    ops::RmsNormForward(N, d, xs.data(), ws.data(), eps, ys.data(), rs.data());
    double l = 0;
    for (int64_t i = 0; i < N * d; ++i) l += double{dy[i]} * ys[i];
    return l;
  };
  for (int64_t i = 0; i < N * d; ++i) {
    auto xp = x, xm = x;
    xp[i] += kFdStep;
    xm[i] -= kFdStep;
    ExpectNearRel(dx[i], (loss(xp, w) - loss(xm, w)) / (2 * kFdStep), kFdRelTol, "dx");
  }
  for (int64_t j = 0; j < d; ++j) {
    auto wp = w, wm = w;
    wp[j] += kFdStep;
    wm[j] -= kFdStep;
    ExpectNearRel(dw[j], (loss(x, wp) - loss(x, wm)) / (2 * kFdStep), kFdRelTol, "dw");
  }
}

TEST(SharedMath, CrossEntropyGradIsSoftmaxMinusOneHot) {
  const int64_t N = 2, V = 11;
  const auto logits = RandomVector(N * V, 4, 2.0f);
  const std::vector<int32_t> targets = {3, 10};
  std::vector<float> g(N * V);
  ops::CrossEntropyBackward(N, V, logits.data(), targets.data(), 0.5f, g.data());
  for (int64_t n = 0; n < N; ++n) {
    double sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(double{logits[n * V + v]});
    for (int64_t v = 0; v < V; ++v) {
      const double p = std::exp(double{logits[n * V + v]}) / sum;
      EXPECT_NEAR(g[n * V + v], 0.5 * (p - (v == targets[n] ? 1.0 : 0.0)), 1e-6);
    }
  }
}

TEST(SharedMath, AttentionScoreGradIsSoftmaxBackward) {
  // For one query over 3 keys: dL/ds_j = p_j (dp_j - sum_i p_i dp_i).
  const float s[3] = {0.2f, -1.0f, 0.7f}, dp[3] = {1.0f, -2.0f, 0.5f};
  double z = 0;
  for (float v : s) z += std::exp(double{v});
  double D = 0;
  for (int j = 0; j < 3; ++j) D += std::exp(double{s[j]}) / z * dp[j];
  for (int j = 0; j < 3; ++j) {
    const float p = static_cast<float>(std::exp(double{s[j]}) / z);
    EXPECT_NEAR(math::AttentionScoreGrad(p, dp[j], static_cast<float>(D), 1.0f), p * (dp[j] - D), 1e-6);
  }
}

TEST(SharedMath, AdamWStepMatchesTextbookAdamW) {
  const double lr = 1e-2, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
  float p = 0.5f, m = 0.0f, v = 0.0f;
  double rp = 0.5, rm = 0.0, rv = 0.0;
  for (int64_t t = 1; t <= 5; ++t) {
    const float g = 0.1f * static_cast<float>(t) - 0.25f;
    math::AdamWUpdate(p, g, m, v, math::MakeAdamWStep(lr, b1, b2, eps, wd, t), true);
    rp *= 1 - lr * wd;
    rm = b1 * rm + (1 - b1) * g;
    rv = b2 * rv + (1 - b2) * g * g;
    const double mhat = rm / (1 - std::pow(b1, t)), vhat = rv / (1 - std::pow(b2, t));
    rp -= lr * mhat / (std::sqrt(vhat) + eps);
    EXPECT_NEAR(p, rp, 1e-6) << "step " << t;
  }
}

TEST(SharedMath, ClipCoefficientFollowsClipGradNorm) {
  EXPECT_EQ(math::ClipCoefficient(5.0, 0.0), 1.0);   // off
  EXPECT_EQ(math::ClipCoefficient(0.5, 1.0), 1.0);   // within
  EXPECT_NEAR(math::ClipCoefficient(4.0, 1.0), 1.0 / (4.0 + 1e-6), 1e-12);
  std::vector<float> g = {3.0f, 4.0f};
  EXPECT_NEAR(optim::ClipGradNorm(g.data(), 2, 1.0), 5.0, 1e-9);
  EXPECT_NEAR(g[0], 3.0 / (5.0 + 1e-6), 1e-7);
}

// --- router rows --------------------------------------------------------------

TEST(RouterRow, TopKMatchesSortAndBreaksTiesToLowerIndex) {
  const int64_t E = 6, k = 3;
  // Experts 1, 3 and 4 tie on the largest logit; 0 is next.
  const std::vector<float> logits = {1.0f, 2.0f, -1.0f, 2.0f, 2.0f, 0.5f};
  std::vector<float> probs(E), w(k);
  std::vector<int32_t> idx(k);
  float sum = 0;
  math::RouterForwardRow(E, k, logits.data(), probs.data(), idx.data(), w.data(), &sum);
  EXPECT_EQ(idx, (std::vector<int32_t>{1, 3, 4}));
  EXPECT_NEAR(std::accumulate(w.begin(), w.end(), 0.0), 1.0, 1e-6);
  // Independent top-k on random rows: stable sort by descending probability.
  for (uint32_t seed = 0; seed < 20; ++seed) {
    const auto l = RandomVector(E, 100 + seed);
    math::RouterForwardRow(E, k, l.data(), probs.data(), idx.data(), w.data(), &sum);
    std::vector<int32_t> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });
    for (int64_t s = 0; s < k; ++s) EXPECT_EQ(idx[s], order[s]) << "seed " << seed;
  }
}

TEST(RouterRow, BackwardMatchesFiniteDifferences) {
  const int64_t E = 5, k = 2;
  const auto logits = RandomVector(E, 7);
  const std::vector<float> dweight = {0.7f, -1.3f};
  const std::vector<float> aux_dprob = {0.01f, -0.02f, 0.03f, 0.0f, 0.05f};
  std::vector<float> probs(E), w(k), dl(E);
  std::vector<int32_t> idx(k);
  float sum = 0;
  math::RouterForwardRow(E, k, logits.data(), probs.data(), idx.data(), w.data(), &sum);
  math::RouterBackwardRow(E, k, probs.data(), idx.data(), w.data(), sum, dweight.data(),
                          aux_dprob.data(), dl.data());
  // L = dweight . topk_weight + aux_dprob . probs, with the chosen experts fixed.
  auto loss = [&](std::vector<float> l) {
    std::vector<float> p(E), ww(k);
    std::vector<int32_t> ii(k);
    float s = 0;
    math::RouterForwardRow(E, k, l.data(), p.data(), ii.data(), ww.data(), &s);
    EXPECT_EQ(ii, idx);  // the step is small enough not to change the choice
    double v = 0;
    for (int64_t i = 0; i < k; ++i) v += double{dweight[i]} * ww[i];
    for (int64_t e = 0; e < E; ++e) v += double{aux_dprob[e]} * p[e];
    return v;
  };
  for (int64_t e = 0; e < E; ++e) {
    auto lp = logits, lm = logits;
    lp[e] += kFdStep;
    lm[e] -= kFdStep;
    ExpectNearRel(dl[e], (loss(lp) - loss(lm)) / (2 * kFdStep), kFdRelTol, "dlogit");
  }
}

TEST(RouterRow, CpuOpAgreesWithTheSharedRows) {
  const int64_t N = 9, E = 8, k = 2;
  const auto logits = RandomVector(N * E, 11);
  ops::RouterOutput out;
  ops::RouterForward(N, E, k, logits.data(), &out);
  for (int64_t n = 0; n < N; ++n) {
    std::vector<float> probs(E), w(k);
    std::vector<int32_t> idx(k);
    float sum = 0;
    math::RouterForwardRow(E, k, logits.data() + n * E, probs.data(), idx.data(), w.data(), &sum);
    for (int64_t e = 0; e < E; ++e) EXPECT_EQ(out.probs[n * E + e], probs[e]);
    for (int64_t s = 0; s < k; ++s) {
      EXPECT_EQ(out.topk_expert[n * k + s], idx[s]);
      EXPECT_EQ(out.topk_weight[n * k + s], w[s]);
    }
  }
}

TEST(RouterRow, AuxLossProbGradMatchesFiniteDifferenceOfAuxLoss) {
  // aux = E * sum_e (count_e / rows) (prob_sum_e / rows): linear in each p.
  const int64_t E = 4, rows = 10;
  const std::vector<int64_t> counts = {5, 0, 8, 7};
  std::vector<double> prob_sums = {2.0, 1.5, 3.5, 3.0};
  const double coef = 0.02, scale = 0.5;
  for (int64_t e = 0; e < E; ++e) {
    auto up = prob_sums, down = prob_sums;
    up[e] += 1e-3;
    down[e] -= 1e-3;
    const double fd = scale * coef * (ops::AuxLoss(E, rows, counts, up) - ops::AuxLoss(E, rows, counts, down)) / 2e-3;
    EXPECT_NEAR(math::AuxLossProbGrad(scale, coef, E, counts[e], rows), fd, 1e-7);
  }
}

// --- caching allocator ----------------------------------------------------------

// A backing over malloc that records calls and can be told to fail.
struct FakeBacking {
  int64_t allocations = 0, releases = 0;
  size_t fail_above = SIZE_MAX;  // requests larger than this fail
  size_t live_bytes = 0, capacity = SIZE_MAX;
  std::set<void*> live;
  std::vector<std::pair<void*, size_t>> sizes;

  kernels::CachingAllocator::Backing Make() {
    return {[this](size_t bytes) -> void* {
              if (bytes > fail_above || live_bytes + bytes > capacity) return nullptr;
              ++allocations;
              void* p = std::malloc(bytes);
              live.insert(p);
              sizes.emplace_back(p, bytes);
              live_bytes += bytes;
              return p;
            },
            [this](void* p) {
              ++releases;
              for (auto& [q, n] : sizes)
                if (q == p) live_bytes -= n;
              live.erase(p);
              std::free(p);
            }};
  }
};

TEST(CachingAllocator, RoundsSizesToGranularity) {
  using A = kernels::CachingAllocator;
  EXPECT_EQ(A::RoundUp(1), 512u);
  EXPECT_EQ(A::RoundUp(512), 512u);
  EXPECT_EQ(A::RoundUp(513), 1024u);
  EXPECT_EQ(A::RoundUp((1u << 20) + 1), 2u << 20);
  EXPECT_EQ(A::RoundUp(3u << 20), 4u << 20);
}

TEST(CachingAllocator, ReusesFreedBlocksOfFittingSize) {
  FakeBacking fake;
  {
    kernels::CachingAllocator alloc(fake.Make());
    EXPECT_EQ(alloc.Allocate(0), nullptr);
    void* a = alloc.Allocate(2000);
    alloc.Free(a);
    void* b = alloc.Allocate(1800);  // rounds to 2048: the cached block
    EXPECT_EQ(a, b);
    EXPECT_EQ(fake.allocations, 1);
    EXPECT_EQ(alloc.stats().cache_hits, 1);
    alloc.Free(b);
    void* c = alloc.Allocate(100);  // 512 B: the 2048 B block is more than twice that
    EXPECT_NE(c, b);
    EXPECT_EQ(fake.allocations, 2);
    const auto st = alloc.stats();
    EXPECT_EQ(st.bytes_in_use, 512u);
    EXPECT_EQ(st.bytes_cached, 2048u);
    alloc.EmptyCache();
    EXPECT_EQ(fake.releases, 1);
    EXPECT_EQ(alloc.stats().bytes_cached, 0u);
    EXPECT_THROW(alloc.Free(reinterpret_cast<void*>(0x1234)), Error);
    alloc.Free(c);
  }
  EXPECT_TRUE(fake.live.empty());  // the destructor released everything
}

TEST(CachingAllocator, EmptiesTheCacheAndRetriesBeforeFailing) {
  FakeBacking fake;
  fake.capacity = 3 * 1024;
  kernels::CachingAllocator alloc(fake.Make());
  void* a = alloc.Allocate(1024);
  void* b = alloc.Allocate(1024);
  alloc.Free(a);
  alloc.Free(b);
  // 2 KiB cached, 1 KiB free in the backing: a 3 KiB request fits only once
  // the cache is released.
  void* c = alloc.Allocate(3 * 1024);
  EXPECT_NE(c, nullptr);
  EXPECT_EQ(alloc.stats().bytes_cached, 0u);
  EXPECT_THROW(alloc.Allocate(1024), Error);  // truly out of memory
  alloc.Free(c);
}

// Streams: a block goes back to the pool of the stream it was allocated for,
// and one another stream used waits for that stream's event (a planted
// cross-stream reuse: an NCCL stream still reading a freed packed buffer).
TEST(CachingAllocator, ReusesAcrossStreamsOnlyAfterTheirEvents) {
  FakeBacking fake;
  auto backing = fake.Make();
  std::vector<bool> done;  // per event handed out
  int destroyed = 0;
  void* const compute = nullptr;
  void* const nccl = reinterpret_cast<void*>(0x10);
  backing.record_event = [&](void* stream) -> void* {
    EXPECT_EQ(stream, nccl) << "an event on the stream that used the block";
    done.push_back(false);
    return reinterpret_cast<void*>(done.size());
  };
  backing.event_done = [&](void* e) { return static_cast<bool>(done[reinterpret_cast<size_t>(e) - 1]); };
  backing.destroy_event = [&](void*) { ++destroyed; };
  kernels::CachingAllocator alloc(std::move(backing));

  // One stream: reused at once (its own order protects it); another stream
  // never gets it.
  void* a = alloc.Allocate(4096, compute);
  alloc.Free(a);
  void* other = alloc.Allocate(4096, nccl);
  EXPECT_NE(other, a) << "a block handed to another stream without an event";
  EXPECT_EQ(alloc.Allocate(4096, compute), a);

  // Used by the NCCL stream too: pending until its event completes.
  alloc.RecordStream(a, nccl);
  alloc.Free(a);
  ASSERT_EQ(done.size(), 1u);
  void* b = alloc.Allocate(4096, compute);
  EXPECT_NE(b, a) << "reused while the other stream may still read it";
  EXPECT_EQ(alloc.stats().bytes_cached, 4096u);  // a, pending
  done[0] = true;
  void* c = alloc.Allocate(4096, compute);
  EXPECT_EQ(c, a) << "reusable once the event completed";
  EXPECT_EQ(destroyed, 1);
  alloc.Free(b);
  alloc.Free(c);
  alloc.Free(other);
  EXPECT_THROW(alloc.RecordStream(reinterpret_cast<void*>(0x1234), nccl), Error);
}

// The embedding backward's plan: positions grouped by id in order, segments
// of at most 32 rows of one id, passes until each id has one sum.
TEST(EmbeddingGradPlan, SegmentsOfOneIdInPassesUntilOneSumPerId) {
  std::vector<int32_t> ids;
  for (int i = 0; i < 1100; ++i) ids.push_back(i % 2 == 0 ? 5 : 3 + 4 * (i % 3));  // 5 x550, 7 x184, 3/11 x183
  const kernels::EmbeddingGradPlan plan = kernels::MakeEmbeddingGradPlan(ids.data(), static_cast<int64_t>(ids.size()));
  ASSERT_EQ(plan.rows.size(), ids.size());
  for (size_t i = 1; i < plan.rows.size(); ++i) {
    const int32_t a = plan.rows[i - 1], b = plan.rows[i];
    ASSERT_TRUE(ids[a] < ids[b] || (ids[a] == ids[b] && a < b)) << "grouped by id, in order within an id";
  }
  // 550 rows of id 5: 18 segments, then 1; the others 6 (184, 183) then 1.
  ASSERT_EQ(plan.starts.size(), 2u);
  EXPECT_EQ(plan.starts[0].size() - 1, 18u + 6u + 6u + 6u);
  EXPECT_EQ(plan.starts[1].size() - 1, 4u);
  EXPECT_EQ(plan.ids, (std::vector<int32_t>{3, 5, 7, 11}));
  EXPECT_EQ(plan.partial_rows, 36);
  for (const auto& starts : plan.starts)
    for (size_t s = 1; s < starts.size(); ++s) {
      EXPECT_GT(starts[s], starts[s - 1]);
      EXPECT_LE(starts[s] - starts[s - 1], kernels::kEmbeddingSegmentRows);
    }
  // Packed: rows, every pass's starts, ids.
  EXPECT_EQ(plan.Packed().size(), 1100u + 37u + 5u + 4u);
  EXPECT_EQ(plan.IdsAt(), 1100 + 37 + 5);
  // Ids that repeat at most 32 times: one pass straight into the table.
  const std::vector<int32_t> few = {4, 1, 4, 2};
  const auto one = kernels::MakeEmbeddingGradPlan(few.data(), 4);
  EXPECT_EQ(one.starts.size(), 1u);
  EXPECT_EQ(one.ids, (std::vector<int32_t>{1, 2, 4}));
  EXPECT_EQ(one.partial_rows, 0);
}

// --- precision policy ---------------------------------------------------------

TEST(Precision, PolicyPerGeneration) {
  using kernels::ComputeDtype;
  struct Case {
    const char* requested;
    int sm;
    ComputeDtype compute;
    bool loss_scaling;
  };
  const Case cases[] = {
      {"auto", 70, ComputeDtype::kFp16, true},  // V100
      {"auto", 75, ComputeDtype::kFp16, true},  // T4
      {"auto", 80, ComputeDtype::kBf16, false}, // A100
      {"auto", 86, ComputeDtype::kBf16, false}, // A40
      {"auto", 89, ComputeDtype::kBf16, false}, // L40S
      {"auto", 90, ComputeDtype::kBf16, false}, // H100
      {"fp32", 70, ComputeDtype::kFp32, false},
      {"fp32", 90, ComputeDtype::kFp32, false},
      {"fp16", 90, ComputeDtype::kFp16, true},
      {"bf16", 80, ComputeDtype::kBf16, false},
  };
  for (const Case& c : cases) {
    const auto p = kernels::ChoosePrecision(c.requested, c.sm);
    EXPECT_EQ(p.compute, c.compute) << c.requested << " sm_" << c.sm;
    EXPECT_EQ(p.dynamic_loss_scaling, c.loss_scaling) << c.requested << " sm_" << c.sm;
  }
  EXPECT_THROW(kernels::ChoosePrecision("bf16", 75), Error);
  EXPECT_THROW(kernels::ChoosePrecision("fp8", 90), Error);
  EXPECT_EQ(kernels::ComputeDtypeName(ComputeDtype::kBf16), "bf16");
}

TEST(Precision, DynamicLossScalerBacksOffAndGrows) {
  kernels::DynamicLossScaler::Options o;
  o.initial_scale = 1024;
  o.growth_interval = 3;
  o.min_scale = 256;
  kernels::DynamicLossScaler s(o);
  EXPECT_FALSE(s.Update(true));  // overflow: skip, halve
  EXPECT_EQ(s.scale(), 512);
  EXPECT_TRUE(s.Update(false));
  EXPECT_TRUE(s.Update(false));
  EXPECT_EQ(s.scale(), 512);
  EXPECT_TRUE(s.Update(false));  // third clean step in a row: double
  EXPECT_EQ(s.scale(), 1024);
  EXPECT_FALSE(s.Update(true));
  EXPECT_FALSE(s.Update(true));
  EXPECT_FALSE(s.Update(true));  // clamped at min_scale
  EXPECT_EQ(s.scale(), 256);
  EXPECT_EQ(s.skipped_steps(), 4);
}

// A forward that overflows fp16 even at the smallest scale is an error after
// a bounded number of skipped steps in a row, not a run that never trains.
TEST(Precision, DynamicLossScalerGivesUpAfterTooManySkipsInARow) {
  kernels::DynamicLossScaler::Options o;
  o.max_consecutive_skips = 3;
  kernels::DynamicLossScaler s(o);
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(s.Update(true));
  EXPECT_TRUE(s.Update(false)) << "a clean step resets the count";
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(s.Update(true));
  try {
    s.Update(true);
    FAIL() << "a fourth skip in a row must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("4 steps in a row"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bf16 or fp32"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace hetermoe
