#include "trainer/ops/router.h"

// The row math is shared with the CUDA kernel: kernels/shared/router_row.h.
#include <cmath>

#include "kernels/shared/router_row.h"

namespace hetermoe::ops {

void RouterForward(int64_t N, int64_t E, int64_t k, const float* logits, RouterOutput* out) {
  out->probs.resize(N * E);
  out->topk_expert.resize(N * k);
  out->topk_weight.resize(N * k);
  out->topk_sum.resize(N);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    math::RouterForwardRow(E, k, logits + n * E, out->probs.data() + n * E,
                           out->topk_expert.data() + n * k, out->topk_weight.data() + n * k,
                           out->topk_sum.data() + n);
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
  for (int64_t n = 0; n < N; ++n)
    math::RouterBackwardRow(E, k, r.probs.data() + n * E, r.topk_expert.data() + n * k,
                            r.topk_weight.data() + n * k, r.topk_sum[n], dweight + n * k,
                            aux_dprob, dlogits + n * E);
}

}  // namespace hetermoe::ops
