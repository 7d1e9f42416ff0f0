// Token dispatch, SwiGLU experts and combine: the MoE layer after the router.
//
// The four steps and their tensor contracts (N tokens, k slots, d hidden,
// f expert width, E experts, A = N*k assignments):
//   dispatch : x[N, d] --permute by expert--> xp[A, d]   (rows of expert e are
//              contiguous: [offsets[e], offsets[e+1]), in token order)
//   experts  : xp_e -> g1 = xp_e W1^T, g3 = xp_e W3^T [n_e, f];
//              act = silu(g1) * g3; y_e = act W2^T [n_e, d]
//   combine  : out[n] = sum_slot weight[n, slot] * y[row_of(n, slot)]
// An expert with no tokens is legal: its GEMMs are skipped and its weight
// gradients stay zero. The same DispatchPlan is what a distributed run sends
// over the wire (counts per expert = the all-to-all splits).
#pragma once

#include <cstdint>
#include <vector>

namespace hetermoe::ops {

struct DispatchPlan {
  int64_t tokens = 0, slots = 0, experts = 0;
  std::vector<int64_t> counts;        // [E] assignments per expert
  std::vector<int64_t> offsets;       // [E+1] prefix sums of counts
  std::vector<int64_t> row_of;        // [N*k] permuted row of (token, slot)
  std::vector<int64_t> token_of_row;  // [A] source token of each permuted row
};

DispatchPlan MakeDispatchPlan(int64_t N, int64_t k, int64_t E, const int32_t* topk_expert);

// dst[A, d] = src[token_of_row[r]]
void DispatchGather(const DispatchPlan& plan, int64_t d, const float* src, float* dst);

struct ExpertWeights {
  const float* w1;  // [f, d]
  const float* w2;  // [d, f]
  const float* w3;  // [f, d]
};
struct ExpertGrads {
  float* w1;
  float* w2;
  float* w3;
};

// Saved activations of the experts for backward, all indexed by permuted row.
struct ExpertActivations {
  std::vector<float> g1, g3, act;  // [A, f]
  std::vector<float> y;            // [A, d]
};

// Runs experts [first_expert, first_expert + weights.size()) on their rows
// of xp; the rest of y is left untouched.
void ExpertsForward(const DispatchPlan& plan, int64_t d, int64_t f, int64_t first_expert,
                    const std::vector<ExpertWeights>& weights, const float* xp,
                    ExpertActivations* acts);
// dy[A, d] -> dxp[A, d] (overwritten on the experts' rows), grads accumulated.
void ExpertsBackward(const DispatchPlan& plan, int64_t d, int64_t f, int64_t first_expert,
                     const std::vector<ExpertWeights>& weights,
                     const std::vector<ExpertGrads>& grads, const float* xp,
                     const ExpertActivations& acts, const float* dy, float* dxp);

// out[N, d] += sum_slot weight * y[row]
void Combine(const DispatchPlan& plan, int64_t d, const float* topk_weight, const float* y,
             float* out);
// Backward of Combine: dy[row] = weight * dout[n]; dweight[n, slot] = dout[n] . y[row].
void CombineBackward(const DispatchPlan& plan, int64_t d, const float* topk_weight,
                     const float* y, const float* dout, float* dy, float* dweight);
// dx[n] += sum_slot dxp[row_of(n, slot)]
void DispatchScatterAdd(const DispatchPlan& plan, int64_t d, const float* dxp, float* dx);

}  // namespace hetermoe::ops
