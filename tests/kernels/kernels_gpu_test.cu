// Every CUDA kernel against its CPU op (trainer/ops, the reference checked
// against PyTorch by the golden tests), on odd sizes, repeated token ids and
// an expert with zero tokens. Skipped, with the driver's reason, where there
// is no GPU (see gpu_test_util.h).
//
// The same file also builds for the CPU emulator of kernels/emulator, as
// kernels_emulated_test (ctest -L emulator), so these tests run everywhere:
//   build/tests/kernels/kernels_emulated_test                      # as sm_80
//   HETERMOE_EMULATED_SM=75 build/tests/kernels/kernels_emulated_test  # fp16 paths
// The emulator checks barriers, warp operations, launch limits and device
// pointers, not speed or races between real warps: compute-sanitizer on a
// GPU (below) remains the check for those.
//
// Tolerances, |gpu - cpu| <= atol + rtol |cpu|:
//   fp32 element-wise (same shared code both sides)   rtol 1e-6, atol 1e-7
//   fp32 row reductions (RMSNorm, softmax, CE)        rtol 1e-5, atol 1e-6
//   fp32 attention (online vs two-pass softmax)       rtol 1e-4, atol 2e-5
//   GEMMs, fp32 and bf16/fp16 (against the CPU GEMM of the same rounded
//   operands; cuBLAS accumulates in fp32, no TF32): derived per element,
//   2 gamma_n sum|a||b| (gpu_test_util.h's ExpectWithinGemmBound), n the
//   length of the sum, which holds for any summation order and FMA
//   integer outputs (top-k experts, dispatch plans)   exact
//
// Running under compute-sanitizer on a GPU machine (build with -lineinfo,
// which this target has):
//   compute-sanitizer --tool memcheck  --leak-check full build/tests/kernels/kernels_gpu_test
//   compute-sanitizer --tool racecheck build/tests/kernels/kernels_gpu_test --gtest_filter='*Attention*:*Plan*:*CrossEntropy*:*Norm*'
//   compute-sanitizer --tool initcheck build/tests/kernels/kernels_gpu_test
//   compute-sanitizer --tool synccheck build/tests/kernels/kernels_gpu_test
// (racecheck covers the shared-memory kernels: attention tiles, the dispatch
// plan's warp totals, block reductions.)
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstring>
#include <numeric>
#include <tuple>

#include "kernels/adamw.cuh"
#include "kernels/attention.cuh"
#include "kernels/cast.cuh"
#include "kernels/column_sums.cuh"
#include "kernels/cross_entropy.cuh"
#include "kernels/dispatch.cuh"
#include "kernels/embedding.cuh"
#include "kernels/embedding_plan.h"
#include "kernels/gemm.h"
#include "kernels/grad_norm.cuh"
#include "kernels/rmsnorm.cuh"
#include "kernels/rope.cuh"
#include "kernels/router.cuh"
#include "kernels/rows.cuh"
#include "kernels/shared/math.h"
#include "kernels/swiglu.cuh"
#include "tests/kernels/gpu_test_util.h"
#include "trainer/ops/attention.h"
#include "trainer/ops/cross_entropy.h"
#include "trainer/ops/experts.h"
#include "trainer/ops/gemm.h"
#include "trainer/ops/rmsnorm.h"
#include "trainer/ops/rope.h"
#include "trainer/ops/router.h"
#include "trainer/optim/adamw.h"

namespace hetermoe {
namespace {

using testing::Abs;
using testing::ExpectClose;
using testing::ExpectWithinGemmBound;
using testing::GpuTest;
using testing::Random;

std::vector<float> ToFloat(const std::vector<int64_t>& v) { return {v.begin(), v.end()}; }
std::vector<float> ToFloat(const std::vector<int32_t>& v) { return {v.begin(), v.end()}; }

// Backward in segments by id (kernels/embedding_plan.h): one pass (ids
// repeating 3 times), and three passes (one id 1500 times among others),
// against the CPU's serial scatter-add within 1e-6 of the sum of the
// magnitudes added into each element (the two orders differ by rounding).
TEST_F(GpuTest, EmbeddingForwardAndBackwardWithRepeatedIds) {
  for (const auto& [V, N, frequent] : {std::tuple<int64_t, int64_t, int64_t>{10, 23, 0}, {50, 3000, 1500}}) {
    SCOPED_TRACE("N " + std::to_string(N));
    const int64_t d = 37;
    const auto table = Random(V * d, 1);
    std::vector<int32_t> ids(N);
    for (int64_t n = 0; n < N; ++n)  // repeats; with `frequent`, every other token is id 7
      ids[n] = static_cast<int32_t>(frequent && n % 2 == 0 ? 7 : (n * 7) % V);
    const auto dout = Random(N * d, 2);
    auto dtable = Random(V * d, 3);  // backward accumulates onto what is there
    const kernels::EmbeddingGradPlan plan = kernels::MakeEmbeddingGradPlan(ids.data(), N);
    EXPECT_EQ(plan.starts.size(), frequent ? 3u : 1u) << "passes";

    auto d_table = Up(table), d_dout = Up(dout), d_dtable = Up(dtable);
    auto d_ids = Up(ids), d_plan = Up(plan.Packed());
    auto d_ws = Empty<float>(static_cast<size_t>(kernels::EmbeddingBackwardWorkspace(plan, d)));
    auto d_out = Empty<float>(N * d);
    ASSERT_EQ(kernels::LaunchEmbeddingForward(d_table.data(), d_ids.data(), N, d, d_out.data(), stream()),
              cudaSuccess);
    ASSERT_EQ(kernels::LaunchEmbeddingBackward(d_dout.data(), plan, d_plan.data(), d, d_ws.data(), d_dtable.data(),
                                               stream()),
              cudaSuccess);

    std::vector<float> out(N * d), magnitude(V * d);
    for (size_t i = 0; i < dtable.size(); ++i) magnitude[i] = std::abs(dtable[i]);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < d; ++j) {
        out[n * d + j] = table[ids[n] * d + j];
        dtable[ids[n] * d + j] += dout[n * d + j];
        magnitude[ids[n] * d + j] += std::abs(dout[n * d + j]);
      }
    ExpectClose(Down(d_out), out, 0, 0, "embedding forward");
    const auto got = Down(d_dtable);
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_NEAR(got[i], dtable[i], 1e-6 * magnitude[i]) << "embedding backward, element " << i;
  }
}

TEST_F(GpuTest, RmsNormMatchesCpuOnOddSizes) {
  for (const auto& [N, d] : {std::pair<int64_t, int64_t>{13, 129}, {1, 7}, {40, 64}}) {
    const auto x = Random(N * d, 4), w = Random(d, 5), dy = Random(N * d, 6);
    auto dx = Random(N * d, 7), dw = Random(d, 8);
    auto d_x = Up(x), d_w = Up(w), d_dy = Up(dy), d_dx = Up(dx), d_dw = Up(dw);
    auto d_y = Empty<float>(N * d), d_rstd = Empty<float>(N);
    ASSERT_EQ(kernels::LaunchRmsNormForward(d_x.data(), d_w.data(), N, d, 1e-5f, d_y.data(), d_rstd.data(), stream()),
              cudaSuccess);
    std::vector<float> y(N * d), rstd(N);
    ops::RmsNormForward(N, d, x.data(), w.data(), 1e-5f, y.data(), rstd.data());
    ExpectClose(Down(d_y), y, 1e-5, 1e-6, "rmsnorm y");
    ExpectClose(Down(d_rstd), rstd, 1e-5, 1e-6, "rmsnorm rstd");
    // Backward from the CPU's rstd so only the backward is compared.
    auto d_rstd_cpu = Up(rstd);
    auto d_ws = Empty<float>(static_cast<size_t>(kernels::RmsNormBackwardWorkspace(N, d)));
    ASSERT_EQ(kernels::LaunchRmsNormBackward(d_dy.data(), d_x.data(), d_w.data(), d_rstd_cpu.data(), N, d,
                                             d_dx.data(), d_dw.data(), d_ws.data(), stream()),
              cudaSuccess);
    ops::RmsNormBackward(N, d, dy.data(), x.data(), w.data(), rstd.data(), dx.data(), dw.data());
    ExpectClose(Down(d_dx), dx, 1e-5, 1e-6, "rmsnorm dx");
    ExpectClose(Down(d_dw), dw, 1e-5, 1e-5, "rmsnorm dw");
  }
}

TEST_F(GpuTest, RopeForwardAndInverseMatchCpu) {
  const int64_t B = 3, T = 7, heads = 3, hd = 10, N = B * T;
  const auto table = ops::MakeRopeTable(T, hd, 10000.0f);
  auto x = Random(N * heads * hd, 9);
  auto d_x = Up(x), d_cos = Up(table.cos), d_sin = Up(table.sin);
  ASSERT_EQ(kernels::LaunchRope(d_x.data(), d_cos.data(), d_sin.data(), N, heads, hd, T, false, stream()), cudaSuccess);
  ops::RopeApply(table, N, heads, x.data(), false);
  ExpectClose(Down(d_x), x, 1e-6, 1e-7, "rope forward");
  ASSERT_EQ(kernels::LaunchRope(d_x.data(), d_cos.data(), d_sin.data(), N, heads, hd, T, true, stream()), cudaSuccess);
  ops::RopeApply(table, N, heads, x.data(), true);
  ExpectClose(Down(d_x), x, 1e-6, 1e-7, "rope inverse");
}

struct AttentionCase {
  int64_t B, T, H, KV, hd;
};

TEST_F(GpuTest, AttentionForwardBackwardMatchCpu) {
  // Odd lengths (partial tiles and partial row blocks), GQA groups of 1, 2
  // and 4, head dims below, at and above a warp, and above 128 (16-row tiles).
  const AttentionCase cases[] = {
      {2, 37, 4, 2, 16}, {1, 70, 2, 1, 128}, {2, 33, 4, 4, 40}, {1, 1, 2, 2, 8},
      {1, 45, 8, 2, 200}, {3, 9, 2, 1, 4},
  };
  for (const AttentionCase& c : cases) {
    SCOPED_TRACE("B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " H=" + std::to_string(c.H) +
                 " KV=" + std::to_string(c.KV) + " hd=" + std::to_string(c.hd));
    const int64_t N = c.B * c.T, qn = N * c.H * c.hd, kvn = N * c.KV * c.hd;
    const auto q = Random(qn, 10), k = Random(kvn, 11), v = Random(kvn, 12), dout = Random(qn, 13);
    std::vector<float> out(qn), lse(c.B * c.H * c.T), dq(qn), dk(kvn), dv(kvn);
    const ops::AttentionShape shape{c.B, c.T, c.H, c.KV, c.hd};
    ops::AttentionForward(shape, q.data(), k.data(), v.data(), out.data(), lse.data());
    ops::AttentionBackward(shape, q.data(), k.data(), v.data(), out.data(), lse.data(), dout.data(), dq.data(),
                           dk.data(), dv.data());

    auto d_q = Up(q), d_k = Up(k), d_v = Up(v), d_dout = Up(dout);
    auto d_out = Empty<float>(qn), d_lse = Empty<float>(lse.size()), d_D = Empty<float>(lse.size());
    auto d_dq = Empty<float>(qn), d_dk = Empty<float>(kvn), d_dv = Empty<float>(kvn);
    const kernels::AttentionDims dims{c.B, c.T, c.H, c.KV, c.hd};
    ASSERT_EQ(kernels::LaunchAttentionForward(dims, d_q.data(), d_k.data(), d_v.data(), d_out.data(), d_lse.data(),
                                              stream()),
              cudaSuccess);
    ExpectClose(Down(d_out), out, 1e-4, 2e-5, "attention out");
    ExpectClose(Down(d_lse), lse, 1e-4, 2e-5, "attention lse");
    ASSERT_EQ(kernels::LaunchAttentionBackward(dims, d_q.data(), d_k.data(), d_v.data(), d_out.data(),
                                               d_lse.data(), d_dout.data(), d_D.data(), d_dq.data(),
                                               d_dk.data(), d_dv.data(), stream()),
              cudaSuccess);
    ExpectClose(Down(d_dq), dq, 1e-4, 2e-5, "attention dq");
    ExpectClose(Down(d_dk), dk, 1e-4, 2e-5, "attention dk");
    ExpectClose(Down(d_dv), dv, 1e-4, 2e-5, "attention dv");
  }
}

TEST_F(GpuTest, AttentionRejectsUnsupportedShapes) {
  const kernels::AttentionDims too_wide{1, 4, 2, 2, 257};
  const kernels::AttentionDims bad_group{1, 4, 3, 2, 16};
  EXPECT_EQ(kernels::LaunchAttentionForward(too_wide, nullptr, nullptr, nullptr, nullptr, nullptr, stream()),
            cudaErrorInvalidValue);
  EXPECT_EQ(kernels::LaunchAttentionForward(bad_group, nullptr, nullptr, nullptr, nullptr, nullptr, stream()),
            cudaErrorInvalidValue);
}

TEST_F(GpuTest, RouterForwardBackwardAndProbSumsMatchCpu) {
  const int64_t N = 33, E = 8, k = 2;
  auto logits = Random(N * E, 14);
  logits[5 * E + 2] = logits[5 * E + 6] = 9.0f;  // an exact tie: both pick expert 2 first
  ops::RouterOutput r;
  ops::RouterForward(N, E, k, logits.data(), &r);
  auto d_logits = Up(logits);
  auto d_probs = Empty<float>(N * E), d_w = Empty<float>(N * k), d_sum = Empty<float>(N);
  auto d_idx = Empty<int32_t>(N * k);
  ASSERT_EQ(kernels::LaunchRouterForward(d_logits.data(), N, E, k, d_probs.data(), d_idx.data(), d_w.data(),
                                         d_sum.data(), stream()),
            cudaSuccess);
  ExpectClose(Down(d_probs), r.probs, 1e-5, 1e-7, "router probs");
  EXPECT_EQ(Down(d_idx), r.topk_expert);
  ExpectClose(Down(d_w), r.topk_weight, 1e-5, 1e-7, "router weights");
  ExpectClose(Down(d_sum), r.topk_sum, 1e-5, 1e-7, "router top-k sums");

  // Backward from the CPU's forward state, so only the backward is compared.
  const auto dweight = Random(N * k, 15);
  const std::vector<float> aux = {0.01f, -0.02f, 0.0f, 0.03f, 0.0f, 0.0f, 0.05f, -0.01f};
  std::vector<float> dlogits(N * E);
  ops::RouterBackward(N, E, k, r, dweight.data(), aux.data(), dlogits.data());
  auto d_probs_cpu = Up(r.probs), d_w_cpu = Up(r.topk_weight), d_sum_cpu = Up(r.topk_sum);
  auto d_idx_cpu = Up(r.topk_expert);
  auto d_dweight = Up(dweight), d_aux = Up(aux);
  auto d_dlogits = Empty<float>(N * E);
  ASSERT_EQ(kernels::LaunchRouterBackward(d_probs_cpu.data(), d_idx_cpu.data(), d_w_cpu.data(), d_sum_cpu.data(),
                                          d_dweight.data(), d_aux.data(), N, E, k, d_dlogits.data(), stream()),
            cudaSuccess);
  ExpectClose(Down(d_dlogits), dlogits, 1e-5, 1e-6, "router dlogits");

  auto d_sums = Empty<double>(E);
  auto d_ws = Empty<double>(static_cast<size_t>(kernels::RouterProbSumsWorkspace(N, E)));
  ASSERT_EQ(kernels::LaunchRouterProbSums(d_probs_cpu.data(), N, E, d_ws.data(), d_sums.data(), stream()),
            cudaSuccess);
  const auto sums = Down(d_sums);
  for (int64_t e = 0; e < E; ++e) {
    double expect = 0;
    for (int64_t n = 0; n < N; ++n) expect += r.probs[n * E + e];
    // Summed in tiles, not in order: N terms in [0, 1] in double.
    EXPECT_NEAR(sums[e], expect, 1e-15 * N);
  }
}

// Column sums over tokens in tiles (kernels/column_sums.cuh): one pass
// (N <= 256), two, and three (N > 256 * 256) passes, against a serial sum in
// long double, within N * 6e-8 (half an fp32 ulp of 1 per term; the tiles'
// short chains stay well inside it for N(0, 1) entries); the result
// deterministic (the same bits on a second launch); accumulate adds to what
// is there.
TEST_F(GpuTest, ColumnSumsInTilesMatchSerialSums) {
  for (const auto& [N, C] : {std::pair<int64_t, int64_t>{200, 5}, {5000, 33}, {70000, 3}}) {
    SCOPED_TRACE("N " + std::to_string(N) + " C " + std::to_string(C));
    const auto x = Random(N * C, 21);
    auto d_x = Up(x);
    auto d_out = Empty<float>(C);
    auto d_ws = Empty<float>(static_cast<size_t>(kernels::ColumnSumsWorkspace(N, C)));
    ASSERT_EQ(kernels::ColumnSumsWorkspace(N, C) > 0, N > kernels::kColumnSumRows);
    const kernels::ColumnSumRows<float> matrix{d_x.data(), C};
    ASSERT_EQ(kernels::LaunchColumnSums(matrix, N, C, d_ws.data(), d_out.data(), false, stream()), cudaSuccess);
    const auto first = Down(d_out);
    ASSERT_EQ(kernels::LaunchColumnSums(matrix, N, C, d_ws.data(), d_out.data(), true, stream()), cudaSuccess);
    const auto twice = Down(d_out);
    for (int64_t j = 0; j < C; ++j) {
      long double expect = 0;
      for (int64_t i = 0; i < N; ++i) expect += x[i * C + j];
      const double tol = static_cast<double>(N) * 6e-8;
      EXPECT_NEAR(first[j], static_cast<double>(expect), tol) << "column " << j;
      EXPECT_EQ(twice[j], first[j] + first[j]) << "column " << j << ": not deterministic, or accumulate lost";
    }
  }
}

// The dispatch plan built on the device from top-k choices.
class DispatchTest : public GpuTest {
 protected:
  struct Plan {
    kernels::DeviceBuffer<int32_t> counts, offsets, row_of, token_of_row;
  };
  Plan Build(const std::vector<int32_t>& topk, int64_t N, int64_t k, int64_t E) {
    Plan p{Empty<int32_t>(E), Empty<int32_t>(E + 1), Empty<int32_t>(N * k), Empty<int32_t>(N * k)};
    auto d_topk = Up(topk);
    auto d_ws = Empty<int32_t>(static_cast<size_t>(kernels::DispatchPlanWorkspace(N, k, E)));
    EXPECT_EQ(kernels::LaunchBuildDispatchPlan(d_topk.data(), N, k, E, p.counts.data(), p.offsets.data(),
                                               p.row_of.data(), p.token_of_row.data(), d_ws.data(), stream()),
              cudaSuccess);
    HM_CUDA_CHECK(cudaStreamSynchronize(stream()));  // d_topk and d_ws go back to the allocator here
    return p;
  }
};

// More tiles (1094) than one round of the per-expert scan covers (1024):
// the carry between rounds.
TEST_F(DispatchTest, PlanOverManyTilesMatchesCpu) {
  const int64_t N = 560000, k = 2, E = 3, A = N * k;
  std::vector<int32_t> topk(A);
  std::mt19937 rng(31);
  for (int64_t n = 0; n < N; ++n) {
    topk[n * k] = static_cast<int32_t>(rng() % E);
    topk[n * k + 1] = static_cast<int32_t>((topk[n * k] + 1 + rng() % (E - 1)) % E);
  }
  const ops::DispatchPlan plan = ops::MakeDispatchPlan(N, k, E, topk.data());
  const Plan got = Build(topk, N, k, E);
  const auto offsets = Down(got.offsets);
  EXPECT_EQ(std::vector<int64_t>(offsets.begin(), offsets.end()), plan.offsets);
  const auto row_of = Down(got.row_of);
  EXPECT_EQ(std::vector<int64_t>(row_of.begin(), row_of.end()), plan.row_of);
}

TEST_F(DispatchTest, PlanPermuteAndCombineMatchCpuWithAnEmptyExpert) {
  // A = 3000 assignments: several 1024-thread chunks. Expert 3 gets nothing.
  const int64_t N = 1500, k = 2, E = 5, d = 19, A = N * k;
  const int32_t used[] = {0, 1, 2, 4};
  std::mt19937 rng(16);
  std::vector<int32_t> topk(A);
  for (int64_t n = 0; n < N; ++n) {
    const int first = static_cast<int>(rng() % 4);
    const int second = (first + 1 + static_cast<int>(rng() % 3)) % 4;
    topk[n * k] = used[first];
    topk[n * k + 1] = used[second];
  }
  const ops::DispatchPlan plan = ops::MakeDispatchPlan(N, k, E, topk.data());
  ASSERT_EQ(plan.counts[3], 0);

  const Plan got = Build(topk, N, k, E);
  const auto& d_counts = got.counts;
  const auto& d_offsets = got.offsets;
  const auto& d_row_of = got.row_of;
  const auto& d_token_of_row = got.token_of_row;
  EXPECT_EQ(ToFloat(Down(d_counts)), ToFloat(plan.counts));
  EXPECT_EQ(ToFloat(Down(d_offsets)), ToFloat(plan.offsets));
  EXPECT_EQ(ToFloat(Down(d_row_of)), ToFloat(plan.row_of));
  EXPECT_EQ(ToFloat(Down(d_token_of_row)), ToFloat(plan.token_of_row));

  const auto x = Random(N * d, 17), y = Random(A * d, 18), w = Random(A, 19), dout = Random(N * d, 20);
  const auto dxp = Random(A * d, 21);
  auto out = Random(N * d, 22), dx = Random(N * d, 23);
  auto d_x = Up(x), d_y = Up(y), d_w = Up(w), d_dout = Up(dout), d_dxp = Up(dxp), d_out = Up(out), d_dx = Up(dx);
  auto d_xp = Empty<float>(A * d), d_dy = Empty<float>(A * d), d_dweight = Empty<float>(A);
  ASSERT_EQ(kernels::LaunchGatherRows(d_x.data(), d_token_of_row.data(), A, d, d_xp.data(), stream()), cudaSuccess);
  ASSERT_EQ(kernels::LaunchCombine(d_y.data(), d_w.data(), d_row_of.data(), N, k, d, d_out.data(), stream()),
            cudaSuccess);
  ASSERT_EQ(kernels::LaunchCombineBackward(d_y.data(), d_w.data(), d_row_of.data(), d_dout.data(), N, k, d,
                                           d_dy.data(), d_dweight.data(), stream()),
            cudaSuccess);
  ASSERT_EQ(kernels::LaunchScatterAddRows(d_dxp.data(), d_row_of.data(), N, k, d, d_dx.data(), stream()),
            cudaSuccess);

  std::vector<float> xp(A * d), dy(A * d), dweight(A);
  ops::DispatchGather(plan, d, x.data(), xp.data());
  ops::Combine(plan, d, w.data(), y.data(), out.data());
  ops::CombineBackward(plan, d, w.data(), y.data(), dout.data(), dy.data(), dweight.data());
  ops::DispatchScatterAdd(plan, d, dxp.data(), dx.data());
  ExpectClose(Down(d_xp), xp, 0, 0, "dispatch gather");
  ExpectClose(Down(d_out), out, 1e-6, 1e-6, "combine");
  ExpectClose(Down(d_dy), dy, 1e-6, 1e-7, "combine backward dy");
  ExpectClose(Down(d_dweight), dweight, 1e-5, 1e-5, "combine backward dweight");
  ExpectClose(Down(d_dx), dx, 1e-6, 1e-6, "dispatch scatter-add");
}

TEST_F(GpuTest, SwiGluForwardBackwardMatchSharedMath) {
  const int64_t n = 1001;
  const auto g1 = Random(n, 24, 2.0f), g3 = Random(n, 25), dact = Random(n, 26);
  auto d_g1 = Up(g1), d_g3 = Up(g3), d_dact = Up(dact);
  auto d_act = Empty<float>(n), d_dg3 = Empty<float>(n);
  ASSERT_EQ(kernels::LaunchSwiGluForward(d_g1.data(), d_g3.data(), n, d_act.data(), stream()), cudaSuccess);
  // In place, as the backend runs it: dg1 overwrites dact.
  ASSERT_EQ(kernels::LaunchSwiGluBackward(d_g1.data(), d_g3.data(), d_dact.data(), n, d_dact.data(), d_dg3.data(),
                                          stream()),
            cudaSuccess);
  std::vector<float> act(n), dg1(n), dg3(n);
  for (int64_t i = 0; i < n; ++i) {
    act[i] = math::SwiGlu(g1[i], g3[i]);
    math::SwiGluBackward(g1[i], g3[i], dact[i], dg1[i], dg3[i]);
  }
  ExpectClose(Down(d_act), act, 1e-6, 1e-7, "swiglu");
  ExpectClose(Down(d_dact), dg1, 1e-6, 1e-7, "swiglu dg1");
  ExpectClose(Down(d_dg3), dg3, 1e-6, 1e-7, "swiglu dg3");
}

// Rounds to the 16-bit format and back, on the host (the CPU reference of a
// 16-bit GEMM is the fp32 GEMM of rounded operands).
std::vector<float> Rounded(const std::vector<float>& x, kernels::ComputeDtype dtype) {
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    r[i] = dtype == kernels::ComputeDtype::kBf16 ? __bfloat162float(__float2bfloat16_rn(x[i]))
                                                 : __half2float(__float2half_rn(x[i]));
  return r;
}

class GemmTest : public GpuTest {
 protected:
  // Device operand in `dtype` for host fp32 values (kept alive by the test).
  const void* Operand(const std::vector<float>& x, kernels::ComputeDtype dtype) {
    auto f = Up(x);
    if (dtype == kernels::ComputeDtype::kFp32) {
      keep_f32_.push_back(std::move(f));
      return keep_f32_.back().data();
    }
    auto h = Empty<uint16_t>(x.size());
    if (dtype == kernels::ComputeDtype::kBf16)
      HM_CUDA_CHECK(kernels::LaunchCastToBf16(f.data(), x.size(), reinterpret_cast<__nv_bfloat16*>(h.data()), stream()));
    else
      HM_CUDA_CHECK(kernels::LaunchCastToHalf(f.data(), x.size(), reinterpret_cast<__half*>(h.data()), stream()));
    HM_CUDA_CHECK(cudaStreamSynchronize(stream()));
    keep_.push_back(std::move(h));
    return keep_.back().data();
  }
  std::vector<kernels::DeviceBuffer<float>> keep_f32_;
  std::vector<kernels::DeviceBuffer<uint16_t>> keep_;
};

TEST_F(GemmTest, LinearGemmsMatchCpuPerDtype) {
  using kernels::ComputeDtype;
  std::vector<ComputeDtype> dtypes = {ComputeDtype::kFp32, ComputeDtype::kFp16};
  if (Sm() >= 80) dtypes.push_back(ComputeDtype::kBf16);
  kernels::BlasHandle blas(stream());
  struct Shape {
    int64_t M, N, K;
  };
  for (ComputeDtype dtype : dtypes) {
    for (const Shape s : {Shape{7, 13, 5}, Shape{33, 65, 129}, Shape{0, 8, 8}, Shape{1, 1, 1}}) {
      SCOPED_TRACE(std::string(kernels::ComputeDtypeName(dtype)) + " M=" + std::to_string(s.M) +
                   " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K));
      auto x = Random(s.M * s.K, 27), W = Random(s.N * s.K, 28), dy = Random(s.M * s.N, 29);
      const void* d_x = Operand(x, dtype);
      const void* d_W = Operand(W, dtype);
      const void* d_dy = Operand(dy, dtype);
      if (dtype != ComputeDtype::kFp32) {
        x = Rounded(x, dtype);
        W = Rounded(W, dtype);
        dy = Rounded(dy, dtype);
      }
      auto y = Random(s.M * s.N, 30), dx = Random(s.M * s.K, 31), dW = Random(s.N * s.K, 32);
      auto d_y = Up(y), d_dx = Up(dx), d_dW = Up(dW);
      kernels::LinearForward(blas.get(), dtype, s.M, s.N, s.K, d_x, d_W, d_y.data(), true);
      kernels::LinearBackwardInput(blas.get(), dtype, s.M, s.N, s.K, d_dy, d_W, d_dx.data(), false);
      kernels::LinearBackwardWeight(blas.get(), dtype, s.M, s.N, s.K, d_dy, d_x, d_dW.data());
      // Each output's sum of |terms| (the accumulated value counts as one).
      auto my = Abs(y), mdx = std::vector<float>(dx.size(), 0.0f), mdW = Abs(dW);
      const auto ax = Abs(x), aW = Abs(W), ady = Abs(dy);
      ops::LinearForward(s.M, s.N, s.K, ax.data(), aW.data(), my.data(), true);
      ops::LinearBackwardInput(s.M, s.N, s.K, ady.data(), aW.data(), mdx.data(), false);
      ops::LinearBackwardWeight(s.M, s.N, s.K, ady.data(), ax.data(), mdW.data());
      ops::LinearForward(s.M, s.N, s.K, x.data(), W.data(), y.data(), true);
      ops::LinearBackwardInput(s.M, s.N, s.K, dy.data(), W.data(), dx.data(), false);
      ops::LinearBackwardWeight(s.M, s.N, s.K, dy.data(), x.data(), dW.data());
      ExpectWithinGemmBound(Down(d_y), y, my, s.K + 1, "linear forward (accumulate)");
      ExpectWithinGemmBound(Down(d_dx), dx, mdx, s.N, "linear backward input");
      ExpectWithinGemmBound(Down(d_dW), dW, mdW, s.M + 1, "linear backward weight");
    }
  }
}

// The grouped expert GEMMs against the CPU's per-expert GEMMs, with unequal
// row counts and an expert that gets no rows (its outputs stay untouched).
TEST_F(GemmTest, ExpertGemmsMatchCpuPerExpertWithAnEmptyExpert) {
  using kernels::ComputeDtype;
  std::vector<ComputeDtype> dtypes = {ComputeDtype::kFp32, ComputeDtype::kFp16};
  if (Sm() >= 80) dtypes.push_back(ComputeDtype::kBf16);
  kernels::BlasHandle blas(stream());
  const int64_t N = 24, K = 40;
  const std::vector<int64_t> rows = {5, 0, 17, 1};  // per expert
  int64_t total = 0;
  std::vector<int64_t> first;
  for (int64_t r : rows) {
    first.push_back(total);
    total += r;
  }
  const int64_t E = static_cast<int64_t>(rows.size());
  for (ComputeDtype dtype : dtypes) {
    SCOPED_TRACE(std::string(kernels::ComputeDtypeName(dtype)));
    kernels::ExpertGemms gemms(allocator_.get(), stream());
    auto x = Random(total * K, 41), dy = Random(total * N, 42), W = Random(E * N * K, 43);
    const void* d_x = Operand(x, dtype);
    const void* d_dy = Operand(dy, dtype);
    const void* d_W = Operand(W, dtype);
    if (dtype != ComputeDtype::kFp32) {
      x = Rounded(x, dtype);
      dy = Rounded(dy, dtype);
      W = Rounded(W, dtype);
    }
    const size_t bytes = dtype == ComputeDtype::kFp32 ? 4 : 2;
    auto at = [&](const void* base, int64_t elem) { return static_cast<const char*>(base) + elem * bytes; };
    auto y = Random(total * N, 44), dx = Random(total * K, 45), dW = Random(E * N * K, 46);
    auto d_y = Up(y), d_dx = Up(dx), d_dW = Up(dW);
    // Each output's sum of |terms| (the accumulated value counts as one).
    auto my = Abs(y), mdx = std::vector<float>(dx.size(), 0.0f), mdW = Abs(dW);
    const auto ax = Abs(x), aW = Abs(W), ady = Abs(dy);
    std::vector<kernels::ExpertProblem> fwd, bwd_in, bwd_w;
    for (int64_t e = 0; e < E; ++e) {
      fwd.push_back({rows[e], at(d_x, first[e] * K), at(d_W, e * N * K), d_y.data() + first[e] * N});
      bwd_in.push_back({rows[e], at(d_dy, first[e] * N), at(d_W, e * N * K), d_dx.data() + first[e] * K});
      bwd_w.push_back({rows[e], at(d_dy, first[e] * N), at(d_x, first[e] * K), d_dW.data() + e * N * K});
      ops::LinearForward(rows[e], N, K, ax.data() + first[e] * K, aW.data() + e * N * K, my.data() + first[e] * N,
                         true);
      ops::LinearBackwardInput(rows[e], N, K, ady.data() + first[e] * N, aW.data() + e * N * K,
                               mdx.data() + first[e] * K, false);
      ops::LinearBackwardWeight(rows[e], N, K, ady.data() + first[e] * N, ax.data() + first[e] * K,
                                mdW.data() + e * N * K);
      ops::LinearForward(rows[e], N, K, x.data() + first[e] * K, W.data() + e * N * K, y.data() + first[e] * N, true);
      ops::LinearBackwardInput(rows[e], N, K, dy.data() + first[e] * N, W.data() + e * N * K,
                               dx.data() + first[e] * K, false);
      ops::LinearBackwardWeight(rows[e], N, K, dy.data() + first[e] * N, x.data() + first[e] * K,
                                dW.data() + e * N * K);
    }
    gemms.Forward(blas.get(), dtype, N, K, fwd, true);
    gemms.BackwardInput(blas.get(), dtype, N, K, bwd_in, false);
    gemms.BackwardWeight(blas.get(), dtype, N, K, bwd_w);
    ExpectWithinGemmBound(Down(d_y), y, my, K + 1, "grouped forward (accumulate)");
    ExpectWithinGemmBound(Down(d_dx), dx, mdx, N, "grouped backward input");
    ExpectWithinGemmBound(Down(d_dW), dW, mdW, *std::max_element(rows.begin(), rows.end()) + 1,
                          "grouped backward weight (expert 1 untouched)");
    // fp32 is grouped on cuBLAS 12.5+: three calls for the twelve problems.
    if (dtype == ComputeDtype::kFp32 && CUBLAS_VERSION >= 120500) {
      EXPECT_EQ(gemms.grouped_calls(), 3);
    }
    EXPECT_EQ(gemms.grouped_calls() * 3 + gemms.single_calls(), 9) << "3 non-empty experts x 3 products";
  }
}

TEST_F(GpuTest, CrossEntropyForwardBackwardMatchCpu) {
  const int64_t N = 9, V = 1001;
  const auto logits = Random(N * V, 33, 3.0f);
  std::vector<int32_t> targets(N);
  for (int64_t n = 0; n < N; ++n) targets[n] = static_cast<int32_t>((n * 131) % V);
  auto d_logits = Up(logits);
  auto d_targets = Up(targets);
  auto d_loss = Empty<float>(N);
  ASSERT_EQ(kernels::LaunchCrossEntropyForward(d_logits.data(), d_targets.data(), N, V, d_loss.data(), stream()),
            cudaSuccess);
  const auto rows = Down(d_loss);
  const double mean = std::accumulate(rows.begin(), rows.end(), 0.0) / N;
  EXPECT_NEAR(mean, ops::CrossEntropyForward(N, V, logits.data(), targets.data()), 1e-5 * mean);
  // In place, as the backend runs it.
  ASSERT_EQ(kernels::LaunchCrossEntropyBackward(d_logits.data(), d_targets.data(), N, V, 0.25f, d_logits.data(),
                                                stream()),
            cudaSuccess);
  std::vector<float> grad(N * V);
  ops::CrossEntropyBackward(N, V, logits.data(), targets.data(), 0.25f, grad.data());
  ExpectClose(Down(d_logits), grad, 1e-5, 1e-7, "cross-entropy gradient");
}

TEST_F(GpuTest, AdamWMatchesSharedUpdate) {
  const int64_t n = 1000;
  auto p = Random(n, 34), g = Random(n, 35), m = Random(n, 36, 0.1f), v = Random(n, 37, 0.1f);
  for (auto& x : v) x = x * x;
  auto d_p = Up(p), d_g = Up(g), d_m = Up(m), d_v = Up(v);
  const math::AdamWStep step = math::MakeAdamWStep(1e-3, 0.9, 0.95, 1e-8, 0.1, 3);
  ASSERT_EQ(kernels::LaunchAdamW(d_p.data(), d_g.data(), d_m.data(), d_v.data(), n, step, true, stream()), cudaSuccess);
  for (int64_t i = 0; i < n; ++i) math::AdamWUpdate(p[i], g[i], m[i], v[i], step, true);
  ExpectClose(Down(d_p), p, 1e-6, 1e-7, "adamw params");
  ExpectClose(Down(d_m), m, 1e-6, 1e-7, "adamw exp_avg");
  ExpectClose(Down(d_v), v, 1e-6, 1e-7, "adamw exp_avg_sq");
}

TEST_F(GpuTest, GradNormAndScaleMatchCpu) {
  const int64_t n = 100003;
  auto g = Random(n, 38);
  auto d_g = Up(g);
  auto d_partials = Empty<double>(kernels::kNormBlocks), d_out = Empty<double>(1);
  ASSERT_EQ(kernels::LaunchSumOfSquares(d_g.data(), n, d_partials.data(), d_out.data(), stream()), cudaSuccess);
  const double norm = std::sqrt(Down(d_out)[0]);
  EXPECT_NEAR(norm, optim::GlobalGradNorm(g.data(), n), 1e-12 * norm);
  ASSERT_EQ(kernels::LaunchScale(d_g.data(), n, 0.5f, stream()), cudaSuccess);
  for (auto& x : g) x *= 0.5f;
  ExpectClose(Down(d_g), g, 0, 0, "scale");
  // A non-finite gradient shows up in the sum (how fp16 overflow is found).
  g[77] = INFINITY;
  auto d_bad = Up(g);
  ASSERT_EQ(kernels::LaunchSumOfSquares(d_bad.data(), n, d_partials.data(), d_out.data(), stream()), cudaSuccess);
  EXPECT_FALSE(std::isfinite(Down(d_out)[0]));
}

TEST_F(GpuTest, CastsRoundToNearestEven) {
  const auto x = Random(999, 39, 100.0f);
  auto d_x = Up(x);
  auto d_b = Empty<uint16_t>(x.size()), d_h = Empty<uint16_t>(x.size());
  ASSERT_EQ(kernels::LaunchCastToBf16(d_x.data(), x.size(), reinterpret_cast<__nv_bfloat16*>(d_b.data()), stream()),
            cudaSuccess);
  ASSERT_EQ(kernels::LaunchCastToHalf(d_x.data(), x.size(), reinterpret_cast<__half*>(d_h.data()), stream()),
            cudaSuccess);
  const auto b = Down(d_b), h = Down(d_h);
  for (size_t i = 0; i < x.size(); ++i) {
    const __nv_bfloat16 eb = __float2bfloat16_rn(x[i]);
    const __half eh = __float2half_rn(x[i]);
    uint16_t bb, hh;
    std::memcpy(&bb, &eb, 2);
    std::memcpy(&hh, &eh, 2);
    ASSERT_EQ(b[i], bb) << i;
    ASSERT_EQ(h[i], hh) << i;
  }
}

// The NCCL transport's packing (kernels/rows.cuh) against the host wire
// format's definitions (trainer/parallel/wire.h): unique rows gathered,
// fanned out again, a token's rows summed in row order (bitwise in fp32),
// the sums put on first rows; in bf16/fp16 the values round to nearest even.
TEST_F(GpuTest, RowsPackUnpackAndSumLikeTheWireFormat) {
  const int64_t d = 37, rows = 13;
  const auto x = Random(rows * d, 41, 3.0f);
  // Row -> unique token (first occurrences in row order), as wire::MakeDedup.
  const std::vector<int32_t> index = {0, 1, 0, 2, 1, 3, 4, 2, 5, 0, 6, 6, 1};
  const int64_t uniques = 7;
  std::vector<int32_t> first(uniques, -1), start(uniques + 1, 0), by_unique;
  for (int32_t i = 0; i < rows; ++i) {
    if (first[index[i]] < 0) first[index[i]] = i;
    ++start[index[i] + 1];
  }
  for (int64_t u = 0; u < uniques; ++u) start[u + 1] += start[u];
  for (int64_t u = 0; u < uniques; ++u)
    for (int32_t i = 0; i < rows; ++i)
      if (index[i] == u) by_unique.push_back(i);
  auto d_x = Up(x);
  auto d_first = Up(first), d_index = Up(index), d_start = Up(start), d_rows = Up(by_unique);
  std::vector<uint8_t> is_first(rows, 0);
  for (int64_t u = 0; u < uniques; ++u) is_first[first[u]] = 1;
  auto d_is_first = Up(is_first);

  // fp32: gather, fan out, sum, scatter.
  auto d_wire = Empty<float>(uniques * d), d_back = Empty<float>(rows * d), d_sums = Empty<float>(uniques * d);
  ASSERT_EQ(kernels::LaunchPackRows(d_x.data(), d_first.data(), uniques, d, d_wire.data(), kernels::ComputeDtype::kFp32,
                                    stream()), cudaSuccess);
  ASSERT_EQ(kernels::LaunchUnpackRows(d_wire.data(), kernels::ComputeDtype::kFp32, d_index.data(), nullptr, rows, d,
                                      d_back.data(), stream()), cudaSuccess);
  ASSERT_EQ(kernels::LaunchPackSums(d_x.data(), d_start.data(), d_rows.data(), uniques, d, d_sums.data(),
                                    kernels::ComputeDtype::kFp32, stream()), cudaSuccess);
  auto d_scattered = Empty<float>(rows * d);
  ASSERT_EQ(kernels::LaunchUnpackRows(d_sums.data(), kernels::ComputeDtype::kFp32, d_index.data(), d_is_first.data(),
                                      rows, d, d_scattered.data(), stream()), cudaSuccess);
  const auto back = Down(d_back), sums = Down(d_sums), scattered = Down(d_scattered);
  std::vector<float> want_sums(uniques * d, 0.0f);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < d; ++c) want_sums[index[i] * d + c] += x[i * d + c];  // wire::SumByUnique's order
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < d; ++c) {
      ASSERT_EQ(back[i * d + c], x[first[index[i]] * d + c]) << i;
      ASSERT_EQ(scattered[i * d + c], is_first[i] ? want_sums[index[i] * d + c] : 0.0f) << i;
    }
  ASSERT_EQ(sums, want_sums);

  // 16-bit wire: every row through the wire (no pick), rounded to nearest even.
  for (auto dtype : {kernels::ComputeDtype::kBf16, kernels::ComputeDtype::kFp16}) {
    auto d_w16 = Empty<uint16_t>(rows * d);
    ASSERT_EQ(kernels::LaunchPackRows(d_x.data(), nullptr, rows, d, d_w16.data(), dtype, stream()), cudaSuccess);
    ASSERT_EQ(kernels::LaunchUnpackRows(d_w16.data(), dtype, nullptr, nullptr, rows, d, d_back.data(), stream()),
              cudaSuccess);
    const auto got = Down(d_back);
    for (int64_t i = 0; i < rows * d; ++i) {
      const float want = dtype == kernels::ComputeDtype::kBf16 ? __bfloat162float(__float2bfloat16_rn(x[i]))
                                                               : __half2float(__float2half_rn(x[i]));
      ASSERT_EQ(got[i], want) << i;
    }
  }
}

TEST_F(GpuTest, CachingAllocatorOnTheDevice) {
  void* a = allocator_->Allocate(1 << 20);
  ASSERT_NE(a, nullptr);
  HM_CUDA_CHECK(cudaMemsetAsync(a, 0, 1 << 20, stream()));
  allocator_->Free(a);
  EXPECT_EQ(allocator_->Allocate(1 << 20), a);  // reused without cudaMalloc
  allocator_->Free(a);
}

}  // namespace
}  // namespace hetermoe
