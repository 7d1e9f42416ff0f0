#include "trainer/ops/router.h"

#include <cmath>

namespace hetermoe::ops {

void RouterForward(int64_t N, int64_t E, int64_t k, const float* logits, RouterOutput* out) {
  out->probs.resize(N * E);
  out->topk_expert.resize(N * k);
  out->topk_weight.resize(N * k);
  out->topk_sum.resize(N);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* l = logits + n * E;
    float* p = out->probs.data() + n * E;
    float mx = l[0];
    for (int64_t e = 1; e < E; ++e) mx = std::max(mx, l[e]);
    float sum = 0.0f;
    for (int64_t e = 0; e < E; ++e) {
      p[e] = std::exp(l[e] - mx);
      sum += p[e];
    }
    for (int64_t e = 0; e < E; ++e) p[e] /= sum;
    // Top-k by repeated arg-max (k is small); ties go to the lower index.
    int32_t* idx = out->topk_expert.data() + n * k;
    float* w = out->topk_weight.data() + n * k;
    float chosen_sum = 0.0f;
    for (int64_t s = 0; s < k; ++s) {
      int32_t best = -1;
      for (int64_t e = 0; e < E; ++e) {
        bool taken = false;
        for (int64_t u = 0; u < s; ++u) taken |= idx[u] == e;
        if (!taken && (best < 0 || p[e] > p[best])) best = static_cast<int32_t>(e);
      }
      idx[s] = best;
      w[s] = p[best];
      chosen_sum += p[best];
    }
    out->topk_sum[n] = chosen_sum;
    for (int64_t s = 0; s < k; ++s) w[s] /= chosen_sum;
  }
}

double AuxLoss(int64_t E, int64_t rows, const std::vector<int64_t>& counts,
               const std::vector<double>& prob_sums) {
  double aux = 0.0;
  for (int64_t e = 0; e < E; ++e)
    aux += (static_cast<double>(counts[e]) / rows) * (prob_sums[e] / rows);
  return aux * static_cast<double>(E);
}

void RouterBackward(int64_t N, int64_t E, int64_t k, const RouterOutput& r, const float* dweight,
                    const float* aux_dprob, float* dlogits) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* p = r.probs.data() + n * E;
    const int32_t* idx = r.topk_expert.data() + n * k;
    const float* w = r.topk_weight.data() + n * k;
    const float* dw = dweight + n * k;
    float* dl = dlogits + n * E;
    // dp from the aux loss, then from the renormalisation w_i = p_i / S:
    //   dp_i = (dw_i - sum_j dw_j w_j) / S  for i in the top-k.
    for (int64_t e = 0; e < E; ++e) dl[e] = aux_dprob ? aux_dprob[e] : 0.0f;
    float shift = 0.0f;
    for (int64_t s = 0; s < k; ++s) shift += dw[s] * w[s];
    for (int64_t s = 0; s < k; ++s) dl[idx[s]] += (dw[s] - shift) / r.topk_sum[n];
    // Softmax backward: dlogit = p * (dp - sum(dp * p)).
    float dot = 0.0f;
    for (int64_t e = 0; e < E; ++e) dot += dl[e] * p[e];
    for (int64_t e = 0; e < E; ++e) dl[e] = p[e] * (dl[e] - dot);
  }
}

}  // namespace hetermoe::ops
