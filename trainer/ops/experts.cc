#include "trainer/ops/experts.h"

#include "kernels/shared/math.h"
#include "trainer/ops/gemm.h"

namespace hetermoe::ops {

DispatchPlan MakeDispatchPlan(int64_t N, int64_t k, int64_t E, const int32_t* topk_expert) {
  DispatchPlan p;
  p.tokens = N;
  p.slots = k;
  p.experts = E;
  p.counts.assign(E, 0);
  for (int64_t a = 0; a < N * k; ++a) ++p.counts[topk_expert[a]];
  p.offsets.assign(E + 1, 0);
  for (int64_t e = 0; e < E; ++e) p.offsets[e + 1] = p.offsets[e] + p.counts[e];
  // A stable counting sort: within an expert, rows follow token order.
  std::vector<int64_t> next(p.offsets.begin(), p.offsets.end() - 1);
  p.row_of.resize(N * k);
  p.token_of_row.resize(N * k);
  for (int64_t a = 0; a < N * k; ++a) {
    const int64_t row = next[topk_expert[a]]++;
    p.row_of[a] = row;
    p.token_of_row[row] = a / k;
  }
  return p;
}

void DispatchGather(const DispatchPlan& plan, int64_t d, const float* src, float* dst) {
  const int64_t A = plan.tokens * plan.slots;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < A; ++r) {
    const float* s = src + plan.token_of_row[r] * d;
    float* o = dst + r * d;
    for (int64_t j = 0; j < d; ++j) o[j] = s[j];
  }
}

void ExpertsForward(const DispatchPlan& plan, int64_t d, int64_t f, int64_t first_expert,
                    const std::vector<ExpertWeights>& weights, const float* xp,
                    ExpertActivations* acts) {
  const int64_t A = plan.tokens * plan.slots;
  acts->g1.resize(A * f);
  acts->g3.resize(A * f);
  acts->act.resize(A * f);
  acts->y.resize(A * d);
  for (size_t i = 0; i < weights.size(); ++i) {
    const int64_t e = first_expert + static_cast<int64_t>(i);
    const int64_t n = plan.counts[e], r0 = plan.offsets[e];
    if (n == 0) continue;
    float* g1 = acts->g1.data() + r0 * f;
    float* g3 = acts->g3.data() + r0 * f;
    float* act = acts->act.data() + r0 * f;
    LinearForward(n, f, d, xp + r0 * d, weights[i].w1, g1);
    LinearForward(n, f, d, xp + r0 * d, weights[i].w3, g3);
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < n * f; ++j) act[j] = math::SwiGlu(g1[j], g3[j]);
    LinearForward(n, d, f, act, weights[i].w2, acts->y.data() + r0 * d);
  }
}

void ExpertsBackward(const DispatchPlan& plan, int64_t d, int64_t f, int64_t first_expert,
                     const std::vector<ExpertWeights>& weights,
                     const std::vector<ExpertGrads>& grads, const float* xp,
                     const ExpertActivations& acts, const float* dy, float* dxp) {
  std::vector<float> dg1, dg3;
  for (size_t i = 0; i < weights.size(); ++i) {
    const int64_t e = first_expert + static_cast<int64_t>(i);
    const int64_t n = plan.counts[e], r0 = plan.offsets[e];
    if (n == 0) continue;
    const float* g1 = acts.g1.data() + r0 * f;
    const float* g3 = acts.g3.data() + r0 * f;
    const float* act = acts.act.data() + r0 * f;
    const float* dye = dy + r0 * d;
    const float* x = xp + r0 * d;
    dg1.resize(n * f);
    dg3.resize(n * f);
    // dact = dy W2 (kept in dg1 until split into the two branches)
    LinearBackwardInput(n, d, f, dye, weights[i].w2, dg1.data(), false);
    LinearBackwardWeight(n, d, f, dye, act, grads[i].w2);
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < n * f; ++j) math::SwiGluBackward(g1[j], g3[j], dg1[j], dg1[j], dg3[j]);
    LinearBackwardWeight(n, f, d, dg1.data(), x, grads[i].w1);
    LinearBackwardWeight(n, f, d, dg3.data(), x, grads[i].w3);
    LinearBackwardInput(n, f, d, dg1.data(), weights[i].w1, dxp + r0 * d, false);
    LinearBackwardInput(n, f, d, dg3.data(), weights[i].w3, dxp + r0 * d, true);
  }
}

void Combine(const DispatchPlan& plan, int64_t d, const float* topk_weight, const float* y,
             float* out) {
  const int64_t k = plan.slots;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < plan.tokens; ++n) {
    float* o = out + n * d;
    for (int64_t s = 0; s < k; ++s) {
      const float w = topk_weight[n * k + s];
      const float* yr = y + plan.row_of[n * k + s] * d;
      for (int64_t j = 0; j < d; ++j) o[j] += w * yr[j];
    }
  }
}

void CombineBackward(const DispatchPlan& plan, int64_t d, const float* topk_weight,
                     const float* y, const float* dout, float* dy, float* dweight) {
  const int64_t k = plan.slots;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < plan.tokens; ++n) {
    const float* g = dout + n * d;
    for (int64_t s = 0; s < k; ++s) {
      const int64_t row = plan.row_of[n * k + s];
      const float w = topk_weight[n * k + s];
      const float* yr = y + row * d;
      float* dyr = dy + row * d;
      float dot = 0.0f;
      for (int64_t j = 0; j < d; ++j) {
        dyr[j] = w * g[j];
        dot += g[j] * yr[j];
      }
      dweight[n * k + s] = dot;
    }
  }
}

void DispatchScatterAdd(const DispatchPlan& plan, int64_t d, const float* dxp, float* dx) {
  const int64_t k = plan.slots;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < plan.tokens; ++n) {
    float* o = dx + n * d;
    for (int64_t s = 0; s < k; ++s) {
      const float* r = dxp + plan.row_of[n * k + s] * d;
      for (int64_t j = 0; j < d; ++j) o[j] += r[j];
    }
  }
}

}  // namespace hetermoe::ops
