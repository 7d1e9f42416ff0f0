// Algorithm 1 (see asym_ea.h for the derivation and the departures from the
// paper's pseudo-code).
#include "planner/asym_ea.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "common/error.h"

namespace hetermoe::planner {
namespace {

// Floating-point slack so that an accumulated gap equal to T_squeeze (up to
// rounding) pays for a chunk.
constexpr double kEpsilon = 1e-9;

}  // namespace

int AsymEaResult::TotalOffloaded() const { return std::accumulate(offloaded.begin(), offloaded.end(), 0); }

bool AsymEaShapeOk(int attention_ranks, int expert_ranks) {
  return attention_ranks > 0 && expert_ranks > 0 &&
         (expert_ranks % attention_ranks == 0 || attention_ranks % expert_ranks == 0);
}

AsymEaResult AssignAsymmetricExperts(const AsymEaInputs& in) {
  const int L = in.layers, n = in.experts_per_layer, M = in.attention_ranks, N = in.expert_ranks;
  if (L < 1 || n < 1 || M < 1 || N < 1) {
    throw Error("Asym-EA: layers, experts, attention ranks and expert ranks must be positive");
  }
  if (!(in.attention_seconds >= 0 && in.expert_rank_seconds >= 0 && in.offloaded_expert_seconds >= 0)) {
    throw Error("Asym-EA: op times must be non-negative");
  }
  if (in.n_min < 0 || in.n_max < 0) throw Error("Asym-EA: n_min and n_max must be non-negative");
  if (!AsymEaShapeOk(M, N)) {
    throw Error("Asym-EA: group shape " + std::to_string(M) + ":" + std::to_string(N) +
                " needs M | N or N | M so every rank moves the same number of experts");
  }

  AsymEaResult out;
  out.n1 = std::max(1, N / M);
  out.n2 = out.n1 * M / N;
  out.chunk = out.n1 * M;
  out.offloaded.assign(L, 0);

  const int experts_per_rank = (n + N - 1) / N;  // the busiest expert rank's share of a layer
  const double one_expert_on_expert_rank = in.expert_rank_seconds / experts_per_rank;
  out.t_gather = in.expert_rank_seconds - in.attention_seconds;
  out.t_squeeze = out.n2 * one_expert_on_expert_rank + out.n1 * in.offloaded_expert_seconds;

  // Chunks one layer can give: every expert rank gives n2 and keeps at least
  // one expert of the layer (the engine's dispatch sends every expert rank a
  // share of every layer); the rank with the fewest experts bounds it.
  const int layer_cap = std::max(0, n / N - 1) / out.n2;
  const int max_chunks = in.n_max / out.n1;
  const int min_chunks = (in.n_min + out.n2 - 1) / out.n2;
  if (min_chunks > max_chunks) {
    throw Error("Asym-EA: each expert rank must shed " + std::to_string(in.n_min) +
                " experts to fit in memory, but each attention rank can take only " + std::to_string(in.n_max));
  }
  if (min_chunks > layer_cap * L) {
    throw Error("Asym-EA: each expert rank must shed " + std::to_string(in.n_min) + " experts but holds only " +
                std::to_string(layer_cap * out.n2 * L) + " that can move");
  }

  std::vector<int> chunks(L, 0);
  if (out.t_gather > 0 && out.t_squeeze > 0) {
    const double all_gaps = L * out.t_gather;
    out.alpha = std::min(max_chunks * out.t_squeeze / all_gaps, 1.0);
    out.beta = std::max(min_chunks * out.t_squeeze / all_gaps, 1.0);
    double t = 0;
    for (int l = 0; l < L; ++l) {
      t += out.alpha * out.beta * out.t_gather;
      const int c = std::min(static_cast<int>(std::floor(t / out.t_squeeze + kEpsilon)), layer_cap);
      chunks[l] = std::max(c, 0);
      t -= chunks[l] * out.t_squeeze;
    }
  }

  // Memory bounds are hard; the greedy pass meets them up to rounding and
  // per-layer caps. Trim or top up from the last layer backwards.
  int total = std::accumulate(chunks.begin(), chunks.end(), 0);
  for (int l = L - 1; total > max_chunks && l >= 0; --l) {
    const int drop = std::min(chunks[l], total - max_chunks);
    chunks[l] -= drop;
    total -= drop;
  }
  while (total < min_chunks) {
    // Round-robin from the last layer so forced chunks spread evenly.
    bool placed = false;
    for (int l = L - 1; l >= 0 && total < min_chunks; --l) {
      const int fewest = *std::min_element(chunks.begin(), chunks.end());
      if (chunks[l] == fewest && chunks[l] < layer_cap) {
        ++chunks[l];
        ++total;
        placed = true;
      }
    }
    if (!placed) {
      for (int l = L - 1; l >= 0 && total < min_chunks; --l) {
        if (chunks[l] < layer_cap) {
          ++chunks[l];
          ++total;
          placed = true;
        }
      }
    }
    if (!placed) break;  // unreachable: min_chunks <= layer_cap * L was checked
  }

  for (int l = 0; l < L; ++l) out.offloaded[l] = chunks[l] * out.chunk;
  return out;
}

}  // namespace hetermoe::planner
