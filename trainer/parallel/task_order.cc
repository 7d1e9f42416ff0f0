#include "trainer/parallel/task_order.h"

#include <algorithm>

namespace hetermoe::parallel {

std::vector<Task> TaskOrder(const Placement& p, int rank, int in_flight) {
  using K = Task::Kind;
  const bool attention = p.IsAttention(rank);
  const int L = p.layers, R = p.micro_per_rank;
  std::vector<Task> order;
  auto owns = [&](int l) { return p.OwnsExperts(rank, l); };
  if (p.schedule == Schedule::kZebra) {
    const int W = in_flight > 0 ? std::min(in_flight, R) : R;
    for (int j0 = 0; j0 < R; j0 += W) {
      const int j1 = std::min(R, j0 + W);
      for (int l = 0; l < L; ++l) {
        if (attention)
          for (int j = j0; j < j1; ++j) order.push_back({K::kAttnFwd, l, j});
        if (owns(l))
          for (int j = j0; j < j1; ++j) order.push_back({K::kExpFwd, l, j});
      }
      if (attention)
        for (int j = j0; j < j1; ++j) order.push_back({K::kHead, 0, j});
      for (int l = L - 1; l >= 0; --l) {
        if (owns(l))
          for (int j = j0; j < j1; ++j) order.push_back({K::kExpBwd, l, j});
        if (attention)
          for (int j = j0; j < j1; ++j) order.push_back({K::kAttnBwd, l, j});
      }
    }
    return order;
  }
  // sequential / ep: micro-batch by micro-batch.
  for (int j = 0; j < R; ++j) {
    for (int l = 0; l < L; ++l) {
      if (attention) order.push_back({K::kAttnFwd, l, j});
      if (owns(l)) order.push_back({K::kExpFwd, l, j});
    }
    if (attention) order.push_back({K::kHead, 0, j});
    for (int l = L - 1; l >= 0; --l) {
      if (owns(l)) order.push_back({K::kExpBwd, l, j});
      if (attention) order.push_back({K::kAttnBwd, l, j});
    }
  }
  return order;
}

std::string ToString(const Task& t) {
  static const char* kNames[] = {"A^F", "E^F", "H", "E^B", "A^B"};
  std::string s = kNames[static_cast<int>(t.kind)];
  if (t.kind == Task::Kind::kHead) return s + "(" + std::to_string(t.micro + 1) + ")";
  return s + "(" + std::to_string(t.layer + 1) + "," + std::to_string(t.micro + 1) + ")";
}

}  // namespace hetermoe::parallel
