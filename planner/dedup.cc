#include "planner/dedup.h"

#include <algorithm>
#include <numeric>
#include <random>
#include <string>

#include "common/error.h"

namespace hetermoe::planner {

double ReachProbability(int64_t experts, int64_t held, int64_t top_k) {
  if (top_k < 0 || top_k > experts || held < 0 || held > experts)
    throw Error("dedup: " + std::to_string(held) + " of " + std::to_string(experts) + " experts with top-" +
                std::to_string(top_k));
  // C(E - h, k) / C(E, k) = prod_{i < k} (E - h - i) / (E - i): no overflow.
  double miss = 1.0;
  for (int64_t i = 0; i < top_k; ++i)
    miss *= std::max<double>(0.0, static_cast<double>(experts - held - i)) / static_cast<double>(experts - i);
  return 1.0 - miss;
}

double ExpectedDestinations(int64_t experts, const std::vector<int64_t>& experts_on, int64_t top_k) {
  double sum = 0.0;
  for (int64_t held : experts_on) sum += ReachProbability(experts, held, top_k);
  return sum;
}

double DuplicateShare(int64_t experts, int64_t groups, int64_t top_k) {
  if (groups <= 0 || experts % groups != 0)
    throw Error("dedup: " + std::to_string(experts) + " experts do not split into " + std::to_string(groups) +
                " equal groups");
  if (top_k <= 0) throw Error("dedup: top-k must be positive");
  const std::vector<int64_t> on(static_cast<size_t>(groups), experts / groups);
  return 1.0 - ExpectedDestinations(experts, on, top_k) / static_cast<double>(top_k);
}

double MeasureDuplicateShare(int64_t experts, int64_t groups, int64_t top_k, int64_t tokens, uint64_t seed) {
  DuplicateShare(experts, groups, top_k);  // the same argument checks
  std::mt19937_64 rng(seed);
  std::vector<int64_t> ids(static_cast<size_t>(experts));
  std::iota(ids.begin(), ids.end(), 0);
  std::vector<char> hit(static_cast<size_t>(groups));
  const int64_t per_group = experts / groups;
  int64_t distinct = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    // The first top_k of a partial Fisher-Yates shuffle: k distinct experts.
    std::fill(hit.begin(), hit.end(), 0);
    for (int64_t i = 0; i < top_k; ++i) {
      std::uniform_int_distribution<int64_t> pick(i, experts - 1);
      std::swap(ids[i], ids[pick(rng)]);
      char& h = hit[ids[i] / per_group];
      distinct += !h;
      h = 1;
    }
  }
  return 1.0 - static_cast<double>(distinct) / static_cast<double>(tokens * top_k);
}

}  // namespace hetermoe::planner
