// The MoE router (Mixtral): p = softmax(gate logits) over all E experts, keep
// the top-k of p, renormalise them to sum to 1; plus the Switch/Mixtral
// load-balancing loss.
//
// Notation: N tokens, E experts, k experts per token. Arrays are row-major:
// logits/probs[N, E], topk_expert/topk_weight[N, k].
#pragma once

#include <cstdint>
#include <vector>

namespace hetermoe::ops {

struct RouterOutput {
  std::vector<float> probs;        // [N, E] softmax over all experts
  std::vector<int32_t> topk_expert;  // [N, k] descending by probability
  std::vector<float> topk_weight;  // [N, k] renormalised: sum over k == 1
  std::vector<float> topk_sum;     // [N] sum of the top-k probabilities
};

void RouterForward(int64_t N, int64_t E, int64_t k, const float* logits, RouterOutput* out);

// Load-balancing loss over a set of router outputs (all layers of one forward
// pass): with rows = sum of N over the set,
//   F_e = #(row, slot) choosing e / rows,  P_e = mean_rows p[., e],
//   aux = E * sum_e F_e * P_e.
// `counts` holds the (row, slot) counts per expert summed over the set.
double AuxLoss(int64_t E, int64_t rows, const std::vector<int64_t>& counts,
               const std::vector<double>& prob_sums);

// Gradient of the router w.r.t. its logits, overwriting dlogits[N, E], from
//  - dweight[N, k]: gradient w.r.t. the renormalised top-k weights, and
//  - aux_dprob[E]: d(loss)/d p[r, e], the same for every row (the aux loss
//    is linear in p with F held constant).
void RouterBackward(int64_t N, int64_t E, int64_t k, const RouterOutput& r, const float* dweight,
                    const float* aux_dprob, float* dlogits);

}  // namespace hetermoe::ops
