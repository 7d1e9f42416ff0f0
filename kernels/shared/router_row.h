// The MoE router on one token's row, shared by the CPU op (trainer/ops/router)
// and the CUDA kernel (kernels/router.cuh), which runs one thread per token.
//
// Mixtral routing: p = softmax(logits) over all E experts; the top-k of p by
// repeated arg-max (ties go to the lower expert index, so both backends pick
// the same experts); their weights renormalised to sum to 1. Sharing the row
// code makes the choice of experts identical on CPU and GPU whenever the
// probabilities are, which a re-implementation could not promise for ties.
//
// Rows are tiny (E is 8..64), so a sequential loop per row is the right shape
// on both sides. The functions only touch the row pointers they are given.
#pragma once

#include <cstdint>

#include "kernels/shared/math.h"

namespace hetermoe::math {

// logits[E] -> probs[E], topk_expert[k] (descending probability),
// topk_weight[k] (sum 1), *topk_sum = sum of the chosen probabilities.
HM_HD void RouterForwardRow(int64_t E, int64_t k, const float* logits, float* probs,
                            int32_t* topk_expert, float* topk_weight, float* topk_sum) {
  float mx = logits[0];
  for (int64_t e = 1; e < E; ++e) mx = fmaxf(mx, logits[e]);
  float sum = 0.0f;
  for (int64_t e = 0; e < E; ++e) {
    probs[e] = expf(logits[e] - mx);
    sum += probs[e];
  }
  for (int64_t e = 0; e < E; ++e) probs[e] /= sum;
  float chosen_sum = 0.0f;
  for (int64_t s = 0; s < k; ++s) {
    int32_t best = -1;
    for (int64_t e = 0; e < E; ++e) {
      bool taken = false;
      for (int64_t u = 0; u < s; ++u) taken |= topk_expert[u] == e;
      if (!taken && (best < 0 || probs[e] > probs[best])) best = static_cast<int32_t>(e);
    }
    topk_expert[s] = best;
    topk_weight[s] = probs[best];
    chosen_sum += probs[best];
  }
  *topk_sum = chosen_sum;
  for (int64_t s = 0; s < k; ++s) topk_weight[s] /= chosen_sum;
}

// Gradient w.r.t. the row's logits (overwrites dlogits[E]) from
//  - dweight[k]: gradient w.r.t. the renormalised top-k weights, and
//  - aux_dprob[E] (may be null): d(loss)/d p[e] from the load-balancing loss.
// The renormalisation w_i = p_i / S gives dp_i = (dw_i - sum_j dw_j w_j) / S
// for the chosen i; softmax backward then gives dlogit = p (dp - sum(dp p)).
HM_HD void RouterBackwardRow(int64_t E, int64_t k, const float* probs, const int32_t* topk_expert,
                             const float* topk_weight, float topk_sum, const float* dweight,
                             const float* aux_dprob, float* dlogits) {
  for (int64_t e = 0; e < E; ++e) dlogits[e] = aux_dprob ? aux_dprob[e] : 0.0f;
  float shift = 0.0f;
  for (int64_t s = 0; s < k; ++s) shift += dweight[s] * topk_weight[s];
  for (int64_t s = 0; s < k; ++s) dlogits[topk_expert[s]] += (dweight[s] - shift) / topk_sum;
  float dot = 0.0f;
  for (int64_t e = 0; e < E; ++e) dot += dlogits[e] * probs[e];
  for (int64_t e = 0; e < E; ++e) dlogits[e] = probs[e] * (dlogits[e] - dot);
}

// d(loss_scale * coef * aux)/d p[r, e] for every router row r of a forward
// pass: aux = E * sum_e F_e P_e with F_e = count_e / rows held constant and
// P_e = mean_r p[r, e], so the derivative is scale * coef * E * F_e / rows.
inline float AuxLossProbGrad(double loss_scale, double coef, int64_t E, int64_t count_e,
                             int64_t rows) {
  return static_cast<float>(loss_scale * coef * static_cast<double>(E) *
                            (static_cast<double>(count_e) / static_cast<double>(rows)) /
                            static_cast<double>(rows));
}

}  // namespace hetermoe::math
