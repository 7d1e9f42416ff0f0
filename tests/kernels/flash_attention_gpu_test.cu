// The tensor-core attention (kernels/flash_attention.cuh) and the fp32
// attention (kernels/attention.cuh) with a sliding window, against an fp64
// reference of the same math on the same 16-bit inputs, with per-element
// tolerances derived from where each kernel rounds (see Reference below). Causal and windowed, GQA,
// head dims 32, 64 and 128, lengths that are not a multiple of any tile,
// bf16 and fp16.
#include <gtest/gtest.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/attention.cuh"
#include "kernels/flash_attention.cuh"
#include "tests/kernels/gpu_test_util.h"

namespace hetermoe::testing {
namespace {

using kernels::ComputeDtype;

struct FlashCase {
  int64_t B, T, H, KV, hd, window;
  ComputeDtype dtype;
};

std::string Name(const FlashCase& c) {
  return "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " H=" + std::to_string(c.H) +
         " KV=" + std::to_string(c.KV) + " hd=" + std::to_string(c.hd) + " window=" + std::to_string(c.window) +
         (c.dtype == ComputeDtype::kBf16 ? " bf16" : " fp16");
}

// x rounded to the kernel's 16-bit operand type, and that type's unit
// roundoff (half an ulp at 1: 2^-8 for bf16, 2^-11 for fp16).
float Round16(float x, ComputeDtype dtype) {
  return dtype == ComputeDtype::kBf16 ? __bfloat162float(__float2bfloat16_rn(x)) : __half2float(__float2half_rn(x));
}
double UnitRoundoff(ComputeDtype dtype) { return dtype == ComputeDtype::kBf16 ? 0x1p-8 : 0x1p-11; }
std::vector<float> Rounded(std::vector<float> v, ComputeDtype dtype) {
  for (float& x : v) x = Round16(x, dtype);
  return v;
}

// fp64 attention on the 16-bit q, k, v, dO (as the kernel's tensor cores see
// them) with D from the fp32 dO, and for each output the bound of the
// kernel's error. The kernel rounds, beyond its inputs:
//  - P to 16 bits before P V and P^T dO (relative u each): out, dV;
//  - dS to 16 bits before dS K and dS^T Q (relative u): dQ, dK;
//  - D = dO . out from its own out (off by out's error): dS, so dQ, dK;
// and sums in fp32 (n terms: n 2^-24 of the sum of |terms|).
//
// For the fp32 kernel (`fp32`), P stays fp32 but comes from expf (within
// kExpRel), and the forward's online softmax rescales its running sums by
// expf(m - m_new) at each new maximum, up to t + 1 times for row t: out and
// lse carry (t + 2) (kExpRel + 2u) relative, and the backward, which
// recomputes P from that lse, carries it into every P.
struct Reference {
  std::vector<double> out, lse, dq, dk, dv;
  std::vector<double> out_tol, lse_tol, dq_tol, dk_tol, dv_tol;
};

Reference Compute(const FlashCase& c, const std::vector<float>& q, const std::vector<float>& k,
                  const std::vector<float>& v, const std::vector<float>& dout16, const std::vector<float>& dout,
                  bool fp32 = false) {
  const int64_t T = c.T, H = c.H, KV = c.KV, hd = c.hd, group = H / KV;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd)), e32 = 0x1p-24;
  const size_t qn = c.B * T * H * hd, kvn = c.B * T * KV * hd;
  Reference r;
  r.out.assign(qn, 0), r.out_tol.assign(qn, 0), r.dq.assign(qn, 0), r.dq_tol.assign(qn, 0);
  r.lse.assign(c.B * H * T, 0), r.lse_tol.assign(c.B * H * T, 0);
  r.dk.assign(kvn, 0), r.dk_tol.assign(kvn, 0), r.dv.assign(kvn, 0), r.dv_tol.assign(kvn, 0);
  auto qi = [&](int64_t b, int64_t t, int64_t h) { return ((b * T + t) * H + h) * hd; };
  auto ki = [&](int64_t b, int64_t j, int64_t g) { return ((b * T + j) * KV + g) * hd; };
  std::vector<double> p(T), ds(T), ds_tol(T);
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / group;
      for (int64_t t = 0; t < T; ++t) {
        double mx = -INFINITY, dot_mag = 0;
        for (int64_t j = 0; j <= t; ++j) {
          if (!kernels::AttentionVisible(t, j, c.window)) continue;
          double s = 0, mag = 0;
          for (int64_t x = 0; x < hd; ++x) {
            s += double{q[qi(b, t, h) + x]} * k[ki(b, j, g) + x];
            mag += std::abs(double{q[qi(b, t, h) + x]} * k[ki(b, j, g) + x]);
          }
          p[j] = s * scale;
          dot_mag = std::max(dot_mag, mag * scale);
          mx = std::max(mx, p[j]);
        }
        double l = 0;
        for (int64_t j = 0; j <= t; ++j)
          if (kernels::AttentionVisible(t, j, c.window)) l += std::exp(p[j] - mx);
        const double lse = mx + std::log(l);
        const size_t li = (b * H + h) * T + t;
        r.lse[li] = lse;
        // fp32 scores (hd terms) move every exponent by up to hd 2^-24 |q||k|.
        const double score_err = 2 * hd * e32 * dot_mag + 4 * e32 * std::abs(lse);
        // P's rounding: to 16 bits, or (fp32) the online rescaling's and
        // expf's, which also reach lse and, through it, the backward's P.
        const double online = fp32 ? (t + 2) * (kExpRel + 2 * e32) : 0;
        const double u = fp32 ? online + kExpRel + 2 * e32 : UnitRoundoff(c.dtype);
        r.lse_tol[li] = score_err + online + (fp32 ? kExpRel * std::abs(lse) : 0);
        for (int64_t j = 0; j <= t; ++j) p[j] = kernels::AttentionVisible(t, j, c.window) ? std::exp(p[j] - lse) : 0;
        double D = 0, D_err = 0;
        for (int64_t x = 0; x < hd; ++x) {
          double o = 0, mag = 0;
          for (int64_t j = 0; j <= t; ++j) {
            o += p[j] * v[ki(b, j, g) + x];
            mag += p[j] * std::abs(double{v[ki(b, j, g) + x]});
          }
          r.out[qi(b, t, h) + x] = o;
          r.out_tol[qi(b, t, h) + x] = (u + (t + 1) * e32 + 2 * score_err) * mag;
          D += double{dout[qi(b, t, h) + x]} * o;
          D_err += std::abs(double{dout[qi(b, t, h) + x]}) * r.out_tol[qi(b, t, h) + x];
        }
        D_err += hd * e32 * std::abs(D);
        for (int64_t j = 0; j <= t; ++j) {
          if (p[j] == 0) {
            ds[j] = ds_tol[j] = 0;
            continue;
          }
          double dp = 0, dp_mag = 0;
          for (int64_t x = 0; x < hd; ++x) {
            dp += double{dout16[qi(b, t, h) + x]} * v[ki(b, j, g) + x];
            dp_mag += std::abs(double{dout16[qi(b, t, h) + x]} * v[ki(b, j, g) + x]);
          }
          ds[j] = p[j] * (dp - D) * scale;
          ds_tol[j] = u * std::abs(ds[j]) +
                      p[j] * scale * (D_err + hd * e32 * dp_mag + 2 * score_err * std::abs(dp - D));
        }
        for (int64_t x = 0; x < hd; ++x) {
          double dq = 0, tol = 0;
          for (int64_t j = 0; j <= t; ++j) {
            const double kx = k[ki(b, j, g) + x];
            dq += ds[j] * kx;
            tol += (ds_tol[j] + (t + 1) * e32 * std::abs(ds[j])) * std::abs(kx);
          }
          r.dq[qi(b, t, h) + x] = dq;
          r.dq_tol[qi(b, t, h) + x] = tol;
        }
        for (int64_t j = 0; j <= t; ++j) {
          if (p[j] == 0) continue;
          for (int64_t x = 0; x < hd; ++x) {
            const double qx = q[qi(b, t, h) + x], dox = dout16[qi(b, t, h) + x];
            r.dk[ki(b, j, g) + x] += ds[j] * qx;
            r.dk_tol[ki(b, j, g) + x] += (ds_tol[j] + T * e32 * std::abs(ds[j])) * std::abs(qx);
            r.dv[ki(b, j, g) + x] += p[j] * dox;
            r.dv_tol[ki(b, j, g) + x] += (u + T * e32 + 2 * score_err) * p[j] * std::abs(dox);
          }
        }
      }
    }
  return r;
}

// |actual - expected| <= 1.25 tol + 1e-7 element-wise (the bounds are first
// order; 1.25 covers the second-order terms); reports the worst element and
// prints the largest error / allowed ratio.
void ExpectWithin(const std::vector<float>& actual, const std::vector<double>& expected,
                  const std::vector<double>& tol, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  size_t bad = 0, worst = 0;
  double worst_ratio = -1;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double allowed = 1.25 * tol[i] + 1e-7, err = std::abs(actual[i] - expected[i]);
    if (!(err <= allowed)) ++bad;
    const double ratio = std::isnan(err) ? 1e30 : err / allowed;
    if (ratio > worst_ratio) worst_ratio = ratio, worst = i;
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << actual.size() << " off; worst [" << worst << "] actual "
                     << actual[worst] << " expected " << expected[worst] << " allowed " << 1.25 * tol[worst] + 1e-7;
  std::printf("  %-10s largest error / allowed: %.3f\n", what.c_str(), worst_ratio);
}

// The largest tolerance relative to the largest value: a bound so loose that
// any kernel would pass it is itself a failure. (dK sums dS terms that
// cancel, so its bound is the loosest: up to 0.1 of the largest value in
// bf16.)
double Looseness(const std::vector<double>& expected, const std::vector<double>& tol) {
  double vmax = 0, tmax = 0;
  for (size_t i = 0; i < expected.size(); ++i) vmax = std::max(vmax, std::abs(expected[i])), tmax = std::max(tmax, tol[i]);
  return tmax / vmax;
}

TEST_F(GpuTest, FlashAttentionMatchesReferenceWithinItsPrecision) {
  const FlashCase cases[] = {
      {1, 100, 2, 1, 64, 0, ComputeDtype::kBf16},   // GQA 2:1, 1.6 row blocks
      {2, 77, 4, 2, 128, 0, ComputeDtype::kBf16},   // head dim 128
      {1, 150, 2, 2, 64, 40, ComputeDtype::kBf16},  // window < block: tiles skipped
      {1, 70, 2, 1, 128, 17, ComputeDtype::kFp16},  // window, fp16
      {1, 33, 4, 1, 32, 0, ComputeDtype::kFp16},    // head dim 32 (cut loops), GQA 4:1
  };
  const float scale16 = 0.5f;  // keeps fp16 scores and gradients well inside range
  for (const FlashCase& c : cases) {
    SCOPED_TRACE(Name(c));
    std::printf("%s\n", Name(c).c_str());
    ASSERT_TRUE(kernels::FlashAttentionSupported({c.B, c.T, c.H, c.KV, c.hd, c.window}, c.dtype, 80));
    const int64_t N = c.B * c.T, qn = N * c.H * c.hd, kvn = N * c.KV * c.hd;
    const auto q = Random(qn, 20, scale16), k = Random(kvn, 21, scale16), v = Random(kvn, 22);
    const auto dout = Random(qn, 23);
    const auto q16 = Rounded(q, c.dtype), k16 = Rounded(k, c.dtype), v16 = Rounded(v, c.dtype);
    const auto dout16 = Rounded(dout, c.dtype);
    const Reference ref = Compute(c, q16, k16, v16, dout16, dout);
    const double loose = c.dtype == ComputeDtype::kBf16 ? 0.15 : 0.03;
    EXPECT_LT(Looseness(ref.out, ref.out_tol), loose) << "out";
    EXPECT_LT(Looseness(ref.dq, ref.dq_tol), loose) << "dq";
    EXPECT_LT(Looseness(ref.dk, ref.dk_tol), loose) << "dk";
    EXPECT_LT(Looseness(ref.dv, ref.dv_tol), loose) << "dv";

    const kernels::AttentionDims dims{c.B, c.T, c.H, c.KV, c.hd, c.window};
    auto d_q = Up(q), d_k = Up(k), d_v = Up(v), d_dout = Up(dout);
    auto d_out = Empty<float>(qn), d_lse = Empty<float>(ref.lse.size()), d_D = Empty<float>(ref.lse.size());
    auto d_dq = Empty<float>(qn), d_dk = Empty<float>(kvn), d_dv = Empty<float>(kvn);
    ASSERT_EQ(kernels::LaunchFlashAttentionForward(dims, c.dtype, d_q.data(), d_k.data(), d_v.data(), d_out.data(),
                                                   d_lse.data(), stream()),
              cudaSuccess);
    ExpectWithin(Down(d_out), ref.out, ref.out_tol, "flash out");
    ExpectWithin(Down(d_lse), ref.lse, ref.lse_tol, "flash lse");
    ASSERT_EQ(kernels::LaunchFlashAttentionBackward(dims, c.dtype, d_q.data(), d_k.data(), d_v.data(),
                                                    d_out.data(), d_lse.data(), d_dout.data(), d_D.data(),
                                                    d_dq.data(), d_dk.data(), d_dv.data(), stream()),
              cudaSuccess);
    ExpectWithin(Down(d_dq), ref.dq, ref.dq_tol, "flash dq");
    ExpectWithin(Down(d_dk), ref.dk, ref.dk_tol, "flash dk");
    ExpectWithin(Down(d_dv), ref.dv, ref.dv_tol, "flash dv");

    // The fp32 kernels on the same 16-bit values (and dO) agree with the
    // reference within their own derived bounds, windows included. Their D
    // is from the 16-bit dO they are given: the reference of that.
    const Reference ref32 = Compute(c, q16, k16, v16, dout16, dout16, /*fp32=*/true);
    EXPECT_LT(Looseness(ref32.out, ref32.out_tol), 2e-4) << "fp32 out";
    EXPECT_LT(Looseness(ref32.dq, ref32.dq_tol), 2e-3) << "fp32 dq";
    auto f_q = Up(q16), f_k = Up(k16), f_v = Up(v16), f_dout = Up(dout16);
    ASSERT_EQ(kernels::LaunchAttentionForward(dims, f_q.data(), f_k.data(), f_v.data(), d_out.data(), d_lse.data(),
                                              stream()),
              cudaSuccess);
    ExpectWithin(Down(d_out), ref32.out, ref32.out_tol, "fp32 out");
    ExpectWithin(Down(d_lse), ref32.lse, ref32.lse_tol, "fp32 lse");
    ASSERT_EQ(kernels::LaunchAttentionBackward(dims, f_q.data(), f_k.data(), f_v.data(), d_out.data(), d_lse.data(),
                                               f_dout.data(), d_D.data(), d_dq.data(), d_dk.data(), d_dv.data(),
                                               stream()),
              cudaSuccess);
    ExpectWithin(Down(d_dq), ref32.dq, ref32.dq_tol, "fp32 dq");
    ExpectWithin(Down(d_dk), ref32.dk, ref32.dk_tol, "fp32 dk");
    ExpectWithin(Down(d_dv), ref32.dv, ref32.dv_tol, "fp32 dv");
  }
}

// The fp32 kernels (kernels/attention.cuh: the reference kernels, and the
// path of V100, T4, fp32 runs and head dims the tensor cores do not take)
// on shapes the tensor-core test does not reach: odd lengths (partial tiles
// and row blocks), GQA groups of 1, 2 and 4, head dims below, at and above
// a warp and above 128 (16-row tiles), a window, against the fp64 reference
// within their derived bounds.
TEST_F(GpuTest, Fp32AttentionMatchesReferenceWithinItsBoundsOnOddShapes) {
  const FlashCase cases[] = {
      {2, 37, 4, 2, 16, 0, ComputeDtype::kFp32}, {1, 70, 2, 1, 128, 0, ComputeDtype::kFp32},
      {2, 33, 4, 4, 40, 0, ComputeDtype::kFp32}, {1, 1, 2, 2, 8, 0, ComputeDtype::kFp32},
      {1, 45, 8, 2, 200, 0, ComputeDtype::kFp32}, {3, 9, 2, 1, 4, 0, ComputeDtype::kFp32},
      {1, 41, 2, 1, 24, 5, ComputeDtype::kFp32},
  };
  for (const FlashCase& c : cases) {
    const std::string name = "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " H=" + std::to_string(c.H) +
                             " KV=" + std::to_string(c.KV) + " hd=" + std::to_string(c.hd) +
                             " window=" + std::to_string(c.window);
    SCOPED_TRACE(name);
    std::printf("%s fp32\n", name.c_str());
    const int64_t N = c.B * c.T, qn = N * c.H * c.hd, kvn = N * c.KV * c.hd;
    const auto q = Random(qn, 10), k = Random(kvn, 11), v = Random(kvn, 12), dout = Random(qn, 13);
    const Reference ref = Compute(c, q, k, v, dout, dout, /*fp32=*/true);
    // Bounds far below the values (hd 200's scores reach ~40: looser); a
    // single key's dq is exactly 0 and so is its bound.
    EXPECT_LT(Looseness(ref.out, ref.out_tol), 1e-3) << "out";
    if (c.T > 1) EXPECT_LT(Looseness(ref.dq, ref.dq_tol), 1e-2) << "dq";
    const kernels::AttentionDims dims{c.B, c.T, c.H, c.KV, c.hd, c.window};
    auto d_q = Up(q), d_k = Up(k), d_v = Up(v), d_dout = Up(dout);
    auto d_out = Empty<float>(qn), d_lse = Empty<float>(ref.lse.size()), d_D = Empty<float>(ref.lse.size());
    auto d_dq = Empty<float>(qn), d_dk = Empty<float>(kvn), d_dv = Empty<float>(kvn);
    ASSERT_EQ(kernels::LaunchAttentionForward(dims, d_q.data(), d_k.data(), d_v.data(), d_out.data(), d_lse.data(),
                                              stream()),
              cudaSuccess);
    ExpectWithin(Down(d_out), ref.out, ref.out_tol, "out");
    ExpectWithin(Down(d_lse), ref.lse, ref.lse_tol, "lse");
    ASSERT_EQ(kernels::LaunchAttentionBackward(dims, d_q.data(), d_k.data(), d_v.data(), d_out.data(), d_lse.data(),
                                               d_dout.data(), d_D.data(), d_dq.data(), d_dk.data(), d_dv.data(),
                                               stream()),
              cudaSuccess);
    ExpectWithin(Down(d_dq), ref.dq, ref.dq_tol, "dq");
    ExpectWithin(Down(d_dk), ref.dk, ref.dk_tol, "dk");
    ExpectWithin(Down(d_dv), ref.dv, ref.dv_tol, "dv");
  }
}

TEST_F(GpuTest, FlashAttentionRefusesWhatItCannotRun) {
  const kernels::AttentionDims fine{1, 8, 2, 1, 64};
  EXPECT_TRUE(kernels::FlashAttentionSupported(fine, ComputeDtype::kBf16, 80));
  EXPECT_TRUE(kernels::FlashAttentionSupported(fine, ComputeDtype::kFp16, 90));
  EXPECT_FALSE(kernels::FlashAttentionSupported(fine, ComputeDtype::kFp16, 75));  // T4: no m16n8k16
  EXPECT_FALSE(kernels::FlashAttentionSupported(fine, ComputeDtype::kFp32, 80));
  EXPECT_FALSE(kernels::FlashAttentionSupported({1, 8, 2, 1, 40}, ComputeDtype::kBf16, 80));   // hd % 16
  EXPECT_FALSE(kernels::FlashAttentionSupported({1, 8, 2, 1, 256}, ComputeDtype::kBf16, 80));  // hd > 128
  EXPECT_EQ(kernels::LaunchFlashAttentionForward({1, 8, 3, 2, 64}, ComputeDtype::kBf16, nullptr, nullptr, nullptr,
                                                 nullptr, nullptr, stream()),
            cudaErrorInvalidValue);
}

}  // namespace
}  // namespace hetermoe::testing
