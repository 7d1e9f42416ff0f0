#include "kernels/embedding_plan.h"

#include <algorithm>
#include <numeric>

namespace hetermoe::kernels {

EmbeddingGradPlan MakeEmbeddingGradPlan(const int32_t* ids, int64_t N) {
  EmbeddingGradPlan plan;
  plan.rows.resize(static_cast<size_t>(N));
  std::iota(plan.rows.begin(), plan.rows.end(), 0);
  std::stable_sort(plan.rows.begin(), plan.rows.end(), [&](int32_t a, int32_t b) { return ids[a] < ids[b]; });
  // Per distinct id (in sorted order): its id and how many items it has at
  // the current pass's input.
  std::vector<int32_t> id_of;
  std::vector<int64_t> items;
  for (int64_t i = 0; i < N; ++i) {
    const int32_t id = ids[plan.rows[i]];
    if (id_of.empty() || id_of.back() != id) {
      id_of.push_back(id);
      items.push_back(0);
    }
    ++items.back();
  }
  if (N == 0) return plan;
  for (;;) {
    std::vector<int32_t> starts{0}, segment_ids;
    bool last = true;
    int64_t at = 0;
    for (size_t u = 0; u < items.size(); ++u) {
      const int64_t segments = (items[u] + kEmbeddingSegmentRows - 1) / kEmbeddingSegmentRows;
      for (int64_t s = 0; s < segments; ++s) {
        at += std::min(kEmbeddingSegmentRows, items[u] - s * kEmbeddingSegmentRows);
        starts.push_back(static_cast<int32_t>(at));
        segment_ids.push_back(id_of[u]);
      }
      last = last && segments == 1;
      items[u] = segments;
    }
    plan.starts.push_back(std::move(starts));
    if (last) {
      plan.ids = std::move(segment_ids);
      return plan;
    }
    plan.partial_rows = std::max<int64_t>(plan.partial_rows, static_cast<int64_t>(segment_ids.size()));
  }
}

std::vector<int32_t> EmbeddingGradPlan::Packed() const {
  std::vector<int32_t> out(rows);
  for (const auto& s : starts) out.insert(out.end(), s.begin(), s.end());
  out.insert(out.end(), ids.begin(), ids.end());
  return out;
}

int64_t EmbeddingGradPlan::StartsAt(size_t pass) const {
  int64_t at = static_cast<int64_t>(rows.size());
  for (size_t p = 0; p < pass; ++p) at += static_cast<int64_t>(starts[p].size());
  return at;
}

int64_t EmbeddingGradPlan::IdsAt() const { return StartsAt(starts.size()); }

}  // namespace hetermoe::kernels
