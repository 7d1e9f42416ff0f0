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
// Tolerances are derived per element from each op's roundings
// (ExpectWithinBound): every correctly rounded operation, fused or not, within
// u = 2^-24 relative; a sum of n terms, in any order, within gamma_n of the
// sum of their magnitudes (Higham); expf within 2 ulp (CUDA's bound; glibc's
// is 1). Each test says how its bound is counted; the two sides' results
// then differ by at most twice one side's bound. So they hold with nvcc's FMA
// contraction and its math library, not only on the emulator:
//   RMSNorm, RoPE, SwiGLU, router (probabilities, weights, backward),
//   cross-entropy gradient, AdamW, and the GEMMs, fp32 and bf16/fp16
//   (against the CPU GEMM of the same rounded operands; cuBLAS accumulates
//   in fp32, no TF32: 2 gamma_n sum|a||b|, ExpectWithinGemmBound);
//   top-k experts: each chosen expert's probability equals the CPU's j-th
//   largest within that bound, so near-ties may order differently; exact
//   ties go to the lower index;
//   dispatch plans and gathers (integer work, copies): exact.
//   the combine and its backward, the scatter-add;
// attention, fp32 and tensor-core, is checked in flash_attention_gpu_test.cu
// against an fp64 reference within bounds derived the same way.
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

#include <algorithm>
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
#include "kernels/grouped_gemm.cuh"
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
using testing::ExpectWithinBound;
using testing::ExpectWithinGemmBound;
using testing::Gamma;
using testing::kExpRel;
using testing::kU;
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
    // Each side: the sum of d squares (positive terms) within gamma_d; /d,
    // +eps, sqrt and 1/ add 3 roundings to r, which sqrt halves for the
    // first two: r within gamma_d / 2 + 3u; y = w (x r) two more.
    std::vector<double> y_bound(N * d), rstd_bound(N);
    for (int64_t i = 0; i < N; ++i) {
      rstd_bound[i] = (Gamma(d) + 6 * kU) * rstd[i];
      for (int64_t j = 0; j < d; ++j) y_bound[i * d + j] = (Gamma(d) + 10 * kU) * std::abs(y[i * d + j]);
    }
    ExpectWithinBound(Down(d_y), y, y_bound, "rmsnorm y");
    ExpectWithinBound(Down(d_rstd), rstd, rstd_bound, "rmsnorm rstd");
    // Backward from the CPU's rstd so only the backward is compared.
    auto d_rstd_cpu = Up(rstd);
    auto d_ws = Empty<float>(static_cast<size_t>(kernels::RmsNormBackwardWorkspace(N, d)));
    ASSERT_EQ(kernels::LaunchRmsNormBackward(d_dy.data(), d_x.data(), d_w.data(), d_rstd_cpu.data(), N, d,
                                             d_dx.data(), d_dw.data(), d_ws.data(), stream()),
              cudaSuccess);
    const std::vector<float> dx0 = dx, dw0 = dw;
    ops::RmsNormBackward(N, d, dy.data(), x.data(), w.data(), rstd.data(), dx.data(), dw.data());
    // Each side, with M = sum_j |w dy x| of the row: dot = sum w dy x within
    // gamma_(d+2) M; shift = r^3 dot / d four more roundings; dx_j += r w dy
    // - shift x (fused or not) within gamma_3 r |w dy| + gamma_(d+8) r^3 M/d
    // |x|, plus the add into dx0. dw_j = dw0 + sum_rows dy x r: N + 1 terms
    // of up to 2 roundings each, in any order (the CPU's per-thread partials
    // add exact zeros), within gamma_(N+3) (|dw0| + sum |dy x r|).
    std::vector<double> dx_bound(N * d), dw_bound(d);
    for (int64_t j = 0; j < d; ++j) dw_bound[j] = std::abs(dw0[j]);
    for (int64_t i = 0; i < N; ++i) {
      const double r = rstd[i];
      double M = 0;
      for (int64_t j = 0; j < d; ++j) M += std::abs(double{w[j]} * dy[i * d + j] * x[i * d + j]);
      for (int64_t j = 0; j < d; ++j) {
        const size_t at = i * d + j;
        const double a = r * std::abs(double{w[j]} * dy[at]), b = r * r * r * M / d * std::abs(x[at]);
        dx_bound[at] = 2 * (Gamma(3) * a + Gamma(d + 8) * b + kU * (std::abs(dx0[at]) + a + b));
        dw_bound[j] += std::abs(double{dy[at]} * x[at]) * r;
      }
    }
    for (int64_t j = 0; j < d; ++j) dw_bound[j] *= 2 * Gamma(N + 3);
    ExpectWithinBound(Down(d_dx), dx, dx_bound, "rmsnorm dx");
    ExpectWithinBound(Down(d_dw), dw, dw_bound, "rmsnorm dw");
  }
}

TEST_F(GpuTest, RopeForwardAndInverseMatchCpu) {
  const int64_t B = 3, T = 7, heads = 3, hd = 10, N = B * T;
  const auto table = ops::MakeRopeTable(T, hd, 10000.0f);
  auto x = Random(N * heads * hd, 9);
  auto d_x = Up(x), d_cos = Up(table.cos), d_sin = Up(table.sin);
  // Each side rotates a pair as a cos -+ b sin (fused or not): within
  // gamma_2 (|a cos| + |b sin|). Forward and inverse each start from the
  // same input on both sides.
  auto bound = [&](const std::vector<float>& in) {
    const int64_t half = hd / 2;
    std::vector<double> b(in.size());
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < half; ++i) {
          const size_t at = (n * heads + h) * hd + i;
          const double c = table.cos[(n % T) * half + i], s = table.sin[(n % T) * half + i];
          const double m = std::abs(in[at] * c) + std::abs(in[at + half] * s);
          const double m2 = std::abs(in[at + half] * c) + std::abs(in[at] * s);
          b[at] = 2 * Gamma(2) * m;
          b[at + half] = 2 * Gamma(2) * m2;
        }
    return b;
  };
  ASSERT_EQ(kernels::LaunchRope(d_x.data(), d_cos.data(), d_sin.data(), N, heads, hd, T, false, stream()), cudaSuccess);
  const std::vector<double> forward_bound = bound(x);
  ops::RopeApply(table, N, heads, x.data(), false);
  ExpectWithinBound(Down(d_x), x, forward_bound, "rope forward");
  auto d_y = Up(x);  // the CPU's rotation, so the inverse starts from the same input
  ASSERT_EQ(kernels::LaunchRope(d_y.data(), d_cos.data(), d_sin.data(), N, heads, hd, T, true, stream()), cudaSuccess);
  const std::vector<double> inverse_bound = bound(x);
  ops::RopeApply(table, N, heads, x.data(), true);
  ExpectWithinBound(Down(d_y), x, inverse_bound, "rope inverse");
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
  // A near-tie the two sides order differently, as a GPU whose expf differs
  // from the CPU's by an ulp would: row 7's experts 1 and 4 one ulp apart,
  // the larger one expert 4 on the device's side and expert 1 on the CPU's.
  // The check must accept it (the row counts as a near-tie), and only it.
  const float base = 5.0f, above = std::nextafter(base, 6.0f);
  std::vector<float> cpu_logits = logits;
  logits[7 * E + 1] = base, logits[7 * E + 4] = above;
  cpu_logits[7 * E + 1] = above, cpu_logits[7 * E + 4] = base;
  ops::RouterOutput r;
  ops::RouterForward(N, E, k, cpu_logits.data(), &r);
  ASSERT_EQ(r.topk_expert[7 * k], 1) << "the CPU's side of the planted near-tie";
  auto d_logits = Up(logits);
  auto d_probs = Empty<float>(N * E), d_w = Empty<float>(N * k), d_sum = Empty<float>(N);
  auto d_idx = Empty<int32_t>(N * k);
  ASSERT_EQ(kernels::LaunchRouterForward(d_logits.data(), N, E, k, d_probs.data(), d_idx.data(), d_w.data(),
                                         d_sum.data(), stream()),
            cudaSuccess);
  // Each side, per row with m = max: l - m rounds (u |l - m| absolute in
  // exp's argument), exp within kExpRel, the sum of E positive terms within
  // gamma_E, the division one more: p within p_rel = 2 (kExpRel + u
  // max|l - m|) + gamma_E + u. A top-k weight p / S (S the sum of the k
  // chosen) within 2 p_rel + gamma_k + u; S within p_rel + gamma_k.
  std::vector<double> prob_bound(N * E), weight_bound(N * k), sum_bound(N);
  const std::vector<float> probs = Down(d_probs);
  const std::vector<int32_t> idx = Down(d_idx);
  int near_ties = 0;
  for (int64_t n = 0; n < N; ++n) {
    const float* l = logits.data() + n * E;
    const double spread = *std::max_element(l, l + E) - *std::min_element(l, l + E);
    const double p_rel = 2 * (kExpRel + kU * spread) + Gamma(E) + kU;
    for (int64_t e = 0; e < E; ++e) prob_bound[n * E + e] = 2 * p_rel * r.probs[n * E + e];
    // Top-k with ties: the GPU's j-th expert must have the CPU's j-th largest
    // probability within the two sides' difference bound; a different expert
    // than the CPU's is then a near-tie, and moves the weights and S by at
    // most that much.
    std::vector<double> sorted(r.probs.begin() + n * E, r.probs.begin() + (n + 1) * E);
    std::sort(sorted.rbegin(), sorted.rend());
    const double tol = 2 * p_rel * sorted[0];
    bool swapped = false;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = idx[n * k + j];
      ASSERT_TRUE(e >= 0 && e < E) << "row " << n;
      for (int64_t i = 0; i < j; ++i) EXPECT_NE(idx[n * k + i], e) << "row " << n << ": expert chosen twice";
      EXPECT_LE(std::abs(r.probs[n * E + e] - sorted[j]), tol)
          << "row " << n << ": the GPU's choice " << j << " (expert " << e << ") is not among the largest "
          << "probabilities, even allowing for rounding";
      swapped |= e != r.topk_expert[n * k + j];
    }
    near_ties += swapped;
    const double S = r.topk_sum[n], slack = swapped ? 2 * tol : 0;
    sum_bound[n] = 2 * (p_rel + Gamma(k)) * S + slack;
    for (int64_t j = 0; j < k; ++j)
      weight_bound[n * k + j] = 2 * (2 * p_rel + Gamma(k) + kU) * r.topk_weight[n * k + j] + slack / S;
  }
  std::printf("router top-k: %d of %lld rows chose a near-tied expert differently\n", near_ties,
              static_cast<long long>(N));
  EXPECT_EQ(idx[7 * k], 4) << "the device's side of the planted near-tie";
  EXPECT_EQ(near_ties, 1) << "the planted near-tie, accepted, and no other row";
  EXPECT_EQ(idx[5 * k], 2) << "an exact tie goes to the lower expert index";
  EXPECT_EQ(idx[5 * k + 1], 6);
  ExpectWithinBound(probs, r.probs, prob_bound, "router probs");
  ExpectWithinBound(Down(d_w), r.topk_weight, weight_bound, "router weights");
  ExpectWithinBound(Down(d_sum), r.topk_sum, sum_bound, "router top-k sums");

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
  // Each side, per row: shift = sum_s dw w within gamma_k sum|dw w|; t_s =
  // (dw_s - shift) / S two more roundings; dl = aux + t one; dot = sum_e dl
  // p within the dl errors plus gamma_E sum|dl p|; p (dl - dot) two more.
  std::vector<double> dlogits_bound(N * E);
  for (int64_t n = 0; n < N; ++n) {
    const double S = r.topk_sum[n];
    double shift = 0, shift_mag = 0;
    for (int64_t s = 0; s < k; ++s) {
      shift += dweight[n * k + s] * r.topk_weight[n * k + s];
      shift_mag += std::abs(dweight[n * k + s] * r.topk_weight[n * k + s]);
    }
    std::vector<double> dl(aux.begin(), aux.end()), dl_err(E);
    for (int64_t e = 0; e < E; ++e) dl_err[e] = 0;
    for (int64_t s = 0; s < k; ++s) {
      const int32_t e = r.topk_expert[n * k + s];
      const double t = (dweight[n * k + s] - shift) / S;
      const double t_err = (Gamma(k) * shift_mag + 2 * kU * (std::abs(dweight[n * k + s]) + std::abs(shift))) / S;
      dl_err[e] += t_err + kU * (std::abs(dl[e]) + std::abs(t));
      dl[e] += t;
    }
    double dot = 0, dot_err = 0, dot_mag = 0;
    for (int64_t e = 0; e < E; ++e) {
      const double p = r.probs[n * E + e];
      dot += dl[e] * p;
      dot_mag += std::abs(dl[e] * p);
      dot_err += dl_err[e] * p;
    }
    dot_err += Gamma(E) * dot_mag;
    for (int64_t e = 0; e < E; ++e) {
      const double p = r.probs[n * E + e];
      dlogits_bound[n * E + e] = 2 * (p * (dl_err[e] + dot_err) + 2 * kU * p * (std::abs(dl[e]) + std::abs(dot)));
    }
  }
  ExpectWithinBound(Down(d_dlogits), dlogits, dlogits_bound, "router dlogits");

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
  // Each side: out_j = out0_j + sum_s w_s y_sj, a sum of k + 1 terms of one
  // product each (fused or not): gamma_(k+1) of their magnitudes; dy = w
  // dout one rounding; dweight = sum_j dout_j y_j: gamma_d; the scatter-add
  // dx0 + sum_s dxp_s: gamma_k.
  std::vector<double> out_bound(N * d), dy_bound(A * d), dweight_bound(A), dx_bound(N * d);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < d; ++j) {
      double mag = std::abs(out[n * d + j]), scattered = std::abs(dx[n * d + j]);
      for (int64_t s = 0; s < k; ++s) {
        const int64_t row = plan.row_of[n * k + s];
        mag += std::abs(double{w[n * k + s]} * y[row * d + j]);
        scattered += std::abs(dxp[row * d + j]);
        dy_bound[row * d + j] = 2 * kU * std::abs(double{w[n * k + s]} * dout[n * d + j]);
      }
      out_bound[n * d + j] = 2 * Gamma(k + 1) * mag;
      dx_bound[n * d + j] = 2 * Gamma(k) * scattered;
    }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t s = 0; s < k; ++s) {
      const int64_t row = plan.row_of[n * k + s];
      double mag = 0;
      for (int64_t j = 0; j < d; ++j) mag += std::abs(double{dout[n * d + j]} * y[row * d + j]);
      dweight_bound[n * k + s] = 2 * Gamma(d) * mag;
    }
  ops::DispatchGather(plan, d, x.data(), xp.data());
  ops::Combine(plan, d, w.data(), y.data(), out.data());
  ops::CombineBackward(plan, d, w.data(), y.data(), dout.data(), dy.data(), dweight.data());
  ops::DispatchScatterAdd(plan, d, dxp.data(), dx.data());
  ExpectClose(Down(d_xp), xp, 0, 0, "dispatch gather");
  ExpectWithinBound(Down(d_out), out, out_bound, "combine");
  ExpectWithinBound(Down(d_dy), dy, dy_bound, "combine backward dy");
  ExpectWithinBound(Down(d_dweight), dweight, dweight_bound, "combine backward dweight");
  ExpectWithinBound(Down(d_dx), dx, dx_bound, "dispatch scatter-add");
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
  // Each side: exp(-g1) within kExpRel, 1 + e one more rounding, s = 1 /
  // (1 + e) another: s within kExpRel + 2u; silu = g1 s and act = silu g3
  // (dg3 = dact silu) two more. silu'(g1) = s (1 + g1 (1 - s)): 1 - s, whose
  // error is absolute (|ds| + u |1 - s|), then 3 roundings; dg1 = dact g3
  // silu' two more.
  std::vector<double> act_bound(n), dg1_bound(n), dg3_bound(n);
  for (int64_t i = 0; i < n; ++i) {
    const double s_rel = kExpRel + 2 * kU, s = math::Sigmoid(g1[i]), x = g1[i];
    act_bound[i] = 2 * (s_rel + 2 * kU) * std::abs(act[i]);
    dg3_bound[i] = 2 * (s_rel + 2 * kU) * std::abs(dg3[i]);
    const double q = 1 + x * (1 - s);                                         // silu' / s
    const double dq = std::abs(x) * (s_rel * s + 2 * kU * (1 - s)) + kU * std::abs(q);  // q's error
    const double dsilu_grad = s * dq + (s_rel + kU) * s * std::abs(q);
    dg1_bound[i] = 2 * (std::abs(double{dact[i]} * g3[i]) * dsilu_grad + 2 * kU * std::abs(dg1[i]));
  }
  ExpectWithinBound(Down(d_act), act, act_bound, "swiglu");
  ExpectWithinBound(Down(d_dact), dg1, dg1_bound, "swiglu dg1");
  ExpectWithinBound(Down(d_dg3), dg3, dg3_bound, "swiglu dg3");
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
    // The capability check decides: grouped (three calls for the nine
    // products) or one call each. fp32 is grouped on cuBLAS 12.5+.
    const bool grouped = gemms.GroupedSupported(blas.get(), dtype);
    std::printf("%s: cuBLAS grouped GEMM with fp32 output %s\n", std::string(kernels::ComputeDtypeName(dtype)).c_str(),
                grouped ? "supported" : "not supported (one GEMM per expert)");
    if (dtype == ComputeDtype::kFp32 && CUBLAS_VERSION >= 120500) EXPECT_TRUE(grouped);
    EXPECT_EQ(gemms.grouped_calls(), grouped ? 3 : 0);
    EXPECT_EQ(gemms.single_calls(), grouped ? 0 : 9) << "3 non-empty experts x 3 products";
  }
}

// The expert GEMMs sized on the device (kernels/grouped_gemm.cuh) against
// the CPU's per-expert GEMMs: row counts across and below the 64-row tile,
// an empty expert (its gradient untouched), column counts across the
// 64-column tile and a reduction of 40 (not a multiple of the 32 staged),
// and experts' weights 3 N K apart (the layout's w1, w2, w3). The offsets go
// to the device and are never read back.
TEST_F(GemmTest, DeviceSizedExpertGemmsMatchCpuPerExpert) {
  using kernels::ComputeDtype;
  using kernels::GroupedProduct;
  std::vector<ComputeDtype> dtypes = {ComputeDtype::kFp32};
  if (kernels::DeviceSizedGemmSupported(ComputeDtype::kBf16, Sm())) {
    dtypes.push_back(ComputeDtype::kBf16);
    dtypes.push_back(ComputeDtype::kFp16);
  }
  const int64_t N = 72, K = 40, stride = 3 * N * K;
  const std::vector<int64_t> rows = {5, 0, 130, 1, 64};  // per expert
  std::vector<int64_t> first;
  std::vector<int32_t> offsets = {0};
  int64_t total = 0;
  for (int64_t r : rows) {
    first.push_back(total);
    total += r;
    offsets.push_back(static_cast<int32_t>(total));
  }
  const int64_t E = static_cast<int64_t>(rows.size());
  auto d_offsets = Up(offsets);
  for (ComputeDtype dtype : dtypes) {
    SCOPED_TRACE(std::string(kernels::ComputeDtypeName(dtype)));
    auto x = Random(total * K, 51), dy = Random(total * N, 52), W = Random(E * stride, 53);
    const void* d_x = Operand(x, dtype);
    const void* d_dy = Operand(dy, dtype);
    const void* d_W = Operand(W, dtype);
    if (dtype != ComputeDtype::kFp32) {
      x = Rounded(x, dtype);
      dy = Rounded(dy, dtype);
      W = Rounded(W, dtype);
    }
    auto y = Random(total * N, 54), dx = Random(total * K, 55), dW = Random(E * stride, 56);
    auto d_y = Up(y), d_dx = Up(dx), d_dW = Up(dW);
    auto my = Abs(y), mdx = std::vector<float>(dx.size(), 0.0f), mdW = Abs(dW);
    const auto ax = Abs(x), aW = Abs(W), ady = Abs(dy);
    for (int64_t e = 0; e < E; ++e) {
      const int64_t w = e * stride;
      ops::LinearForward(rows[e], N, K, ax.data() + first[e] * K, aW.data() + w, my.data() + first[e] * N, true);
      ops::LinearBackwardInput(rows[e], N, K, ady.data() + first[e] * N, aW.data() + w, mdx.data() + first[e] * K,
                               false);
      ops::LinearBackwardWeight(rows[e], N, K, ady.data() + first[e] * N, ax.data() + first[e] * K, mdW.data() + w);
      ops::LinearForward(rows[e], N, K, x.data() + first[e] * K, W.data() + w, y.data() + first[e] * N, true);
      ops::LinearBackwardInput(rows[e], N, K, dy.data() + first[e] * N, W.data() + w, dx.data() + first[e] * K,
                               false);
      ops::LinearBackwardWeight(rows[e], N, K, dy.data() + first[e] * N, x.data() + first[e] * K, dW.data() + w);
    }
    auto launch = [&](GroupedProduct product, const void* a, const void* b, float* c, bool accumulate) {
      kernels::DeviceSizedGemm g;
      g.product = product;
      g.inputs = dtype;
      g.N = N;
      g.K = K;
      g.experts = E;
      g.offsets = d_offsets.data();
      g.max_rows = total;
      g.a = a;
      g.b = b;
      g.weight_stride = stride;
      g.c = c;
      g.accumulate = accumulate;
      HM_CUDA_CHECK(kernels::LaunchDeviceSizedGemm(g, stream()));
    };
    launch(GroupedProduct::kForward, d_x, d_W, d_y.data(), true);
    launch(GroupedProduct::kBackwardInput, d_dy, d_W, d_dx.data(), false);
    launch(GroupedProduct::kBackwardWeight, d_dy, d_x, d_dW.data(), true);
    ExpectWithinGemmBound(Down(d_y), y, my, K + 1, "device-sized forward (accumulate)");
    ExpectWithinGemmBound(Down(d_dx), dx, mdx, N, "device-sized backward input");
    ExpectWithinGemmBound(Down(d_dW), dW, mdW, *std::max_element(rows.begin(), rows.end()) + 1,
                          "device-sized backward weight (expert 1 and the gaps between experts untouched)");
  }
}

// A weight stride under N K would have one expert's weights overlap the
// next one's: refused before anything runs.
TEST_F(GemmTest, DeviceSizedGemmRefusesOverlappingWeights) {
  kernels::DeviceSizedGemm g;
  auto d_offsets = Up(std::vector<int32_t>{0, 1, 2});
  g.offsets = d_offsets.data();
  g.experts = 2;
  g.N = 4;
  g.K = 4;
  g.max_rows = 2;
  g.weight_stride = 15;  // < N * K
  EXPECT_EQ(kernels::LaunchDeviceSizedGemm(g, stream()), cudaErrorInvalidValue);
}

// The pointer arrays of a grouped GEMM are copied on the ExpertGemms'
// stream: a cuBLAS handle on another stream is refused by name, before the
// GEMM could read arrays that have not arrived.
TEST_F(GemmTest, AHandleOnAnotherStreamIsRefused) {
  using kernels::ComputeDtype;
  if (CUBLAS_VERSION < 120500) GTEST_SKIP() << "no grouped GEMM before cuBLAS 12.5";
  cudaStream_t other = nullptr;
  HM_CUDA_CHECK(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking));
  {
    kernels::BlasHandle blas(other);
    kernels::ExpertGemms gemms(allocator_.get(), stream());
    const auto x = Up(Random(3 * 4, 1)), W = Up(Random(2 * 4, 2));
    auto y = Empty<float>(3 * 2);
    try {
      gemms.Forward(blas.get(), ComputeDtype::kFp32, 2, 4, {{3, x.data(), W.data(), y.data()}}, false);
      ADD_FAILURE() << "a handle on another stream was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("another stream"), std::string::npos) << e.what();
    }
  }
  HM_CUDA_CHECK(cudaStreamSynchronize(other));
  HM_CUDA_CHECK(cudaStreamDestroy(other));
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
  // Each side, per row with m = max: l - m rounds (an absolute u |l - m| in
  // exp's argument), exp within kExpRel; the sum of V positive terms within
  // gamma_V, 1 / sum one more: softmax = exp * inv_sum * scale within
  // e_rel = 2 (kExpRel + u max|l - m|) + gamma_V + 3u; the target's - scale
  // one more rounding of the result.
  std::vector<double> grad_bound(N * V);
  for (int64_t n = 0; n < N; ++n) {
    const float* l = logits.data() + n * V;
    const double m = *std::max_element(l, l + V), spread = m - *std::min_element(l, l + V);
    const double rel = 2 * (kExpRel + kU * spread) + Gamma(V) + 3 * kU;
    for (int64_t v = 0; v < V; ++v) {
      const double soft = grad[n * V + v] + (v == targets[n] ? 0.25 : 0.0);
      grad_bound[n * V + v] = 2 * (rel * std::abs(soft) + kU * std::abs(grad[n * V + v]));
    }
  }
  ExpectWithinBound(Down(d_logits), grad, grad_bound, "cross-entropy gradient");
}

TEST_F(GpuTest, AdamWMatchesSharedUpdate) {
  const int64_t n = 1000;
  auto p = Random(n, 34), g = Random(n, 35), m = Random(n, 36, 0.1f), v = Random(n, 37, 0.1f);
  for (auto& x : v) x = x * x;
  auto d_p = Up(p), d_g = Up(g), d_m = Up(m), d_v = Up(v);
  const math::AdamWStep step = math::MakeAdamWStep(1e-3, 0.9, 0.95, 1e-8, 0.1, 3);
  ASSERT_EQ(kernels::LaunchAdamW(d_p.data(), d_g.data(), d_m.data(), d_v.data(), n, step, true, stream()), cudaSuccess);
  // Each side (the same shared formula; FMA contraction may fuse any a * b +
  // c): exp_avg = b1 m + (1 - b1) g within gamma_3 of its terms' sum;
  // exp_avg_sq = b2 v + (1 - b2) g g within gamma_4; denom = sqrt(v') / c2 +
  // eps: half v''s relative error + 3 roundings; the update (lr / c1) (m' /
  // denom) adds m''s and denom's relative errors + 3; the decayed parameter
  // p (1 - lr wd) 2 roundings, the subtraction 1.
  std::vector<double> p_bound(n), m_bound(n), v_bound(n);
  const std::vector<float> p0 = p, m0 = m, v0 = v;
  for (int64_t i = 0; i < n; ++i) math::AdamWUpdate(p[i], g[i], m[i], v[i], step, true);
  for (int64_t i = 0; i < n; ++i) {
    const double em = Gamma(3) * (std::abs(step.beta1 * m0[i]) + std::abs((1 - step.beta1) * g[i]));
    const double ev = Gamma(4) * (std::abs(step.beta2 * v0[i]) + std::abs((1 - step.beta2) * g[i] * g[i]));
    const double sq = std::sqrt(double{v[i]}) / step.bias_correction2_sqrt, denom = sq + step.eps;
    const double denom_rel = (v[i] > 0 ? ev / v[i] / 2 : 0) * sq / denom + 3 * kU;
    const double update = step.lr / step.bias_correction1 * std::abs(m[i]) / denom;
    const double update_err = update * ((m[i] != 0 ? em / std::abs(m[i]) : 0) + denom_rel + 3 * kU) +
                              step.lr / step.bias_correction1 * em / denom;
    const double decayed = std::abs(p0[i] * (1 - step.lr * step.weight_decay));
    m_bound[i] = 2 * em;
    v_bound[i] = 2 * ev;
    p_bound[i] = 2 * (2 * kU * decayed + update_err + kU * std::abs(p[i]));
  }
  ExpectWithinBound(Down(d_p), p, p_bound, "adamw params");
  ExpectWithinBound(Down(d_m), m, m_bound, "adamw exp_avg");
  ExpectWithinBound(Down(d_v), v, v_bound, "adamw exp_avg_sq");
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
