// Asymmetric expert assignment (Asym-EA, HeterMoE Algorithm 1, "gather and
// squeeze").
//
// When the expert ranks of a ZP group take longer per micro-batch than the
// attention ranks (T_EE > T_A), the attention ranks idle. Asym-EA moves whole
// experts of selected layers back onto the attention ranks (never split,
// never replicated). Experts move in chunks so that every attention rank
// takes the same number (n1) and every expert rank gives the same number
// (n2):
//   n1 = max(1, N / M),  n2 = n1 * M / N,  chunk = n1 * M = n2 * N experts,
// which needs M | N or N | M.
//
// Moving one chunk in a layer shortens the expert rank's time per micro-batch
// by n2 of its n/N experts and lengthens the attention rank's by n1 experts:
//   T_squeeze = n2 * T_EE * N / n + n1 * T_EA
// closes that much of the layer's gap T_gather = T_EE - T_A. A chunk
// overshoots a single layer's gap, so the greedy pass accumulates the gaps of
// successive layers (zebra lets idle time carry over from layer to layer) and
// moves a chunk whenever the accumulated gap covers it:
//   t = 0; for l in 1..L: t += alpha*beta*T_gather;
//          c = floor(t / T_squeeze); offload c chunks in layer l; t -= c * T_squeeze
// alpha <= 1 caps the total at what the attention ranks' memory holds
// (n_max); beta >= 1 raises it to what the expert ranks cannot hold (n_min).
//
// Departures from the paper's printed pseudo-code, and why:
//  - The paper prints T_squeeze = (T_EE*N/n)*n1 + (T_EA*N/n)*n2; its prose
//    (an expert rank gives n2 experts, an attention rank takes n1) gives the
//    formula above. Both agree when M == N.
//  - The paper divides both n_max and n_min by n2. Here n_max counts experts
//    one attention rank can take, so the chunk cap is floor(n_max / n1), and
//    n_min counts experts one expert rank must shed, so the floor is
//    ceil(n_min / n2). Identical when M == N.
//  - Every expert rank keeps at least one expert of every layer (the
//    distributed engine relies on it); chunks beyond that carry over to
//    later layers. If memory forces offloading
//    that the gaps do not pay for (T_gather <= 0), the forced chunks go to the
//    last layers first [inferred: any order is equally good for time there].
// Inputs are forward times per micro-batch; backward scales alike.
#pragma once

#include <vector>

namespace hetermoe::planner {

struct AsymEaInputs {
  int layers = 0;                    // L
  int experts_per_layer = 0;         // n
  int attention_ranks = 0;           // M
  int expert_ranks = 0;              // N
  double attention_seconds = 0;      // T_A: attention + gate of one micro-batch on an attention rank
  double expert_rank_seconds = 0;    // T_EE: all of an expert rank's experts of a layer, one micro-batch
  double offloaded_expert_seconds = 0;  // T_EA: one expert on an attention rank, same tokens
  int n_min = 0;                     // experts each expert rank must shed (over all layers)
  int n_max = 1 << 30;               // experts each attention rank can take (over all layers)
};

struct AsymEaResult {
  std::vector<int> offloaded;   // experts moved to the attention ranks, per layer (group total)
  int n1 = 0;                   // experts one attention rank takes per chunk
  int n2 = 0;                   // experts one expert rank gives per chunk
  int chunk = 0;                // n1 * M == n2 * N, experts moved per chunk
  double t_gather = 0;
  double t_squeeze = 0;
  double alpha = 1;
  double beta = 1;

  int TotalOffloaded() const;
};

// True when Asym-EA can balance a group of this shape (M | N or N | M).
bool AsymEaShapeOk(int attention_ranks, int expert_ranks);

// Algorithm 1. Throws hetermoe::Error when the shape is not M | N or N | M,
// an input is out of range, or memory cannot be satisfied (the expert ranks
// must shed more than the attention ranks can take).
AsymEaResult AssignAsymmetricExperts(const AsymEaInputs& in);

}  // namespace hetermoe::planner
