// Which tensors a rank holds (see ownership.h).
#include "trainer/parallel/ownership.h"

#include <algorithm>
#include <map>
#include <utility>

namespace hetermoe::parallel {
namespace {

void Classify(const model::ParameterLayout& layout, const Placement& placement, int rank, Ownership& out) {
  const auto& ts = layout.tensors();
  std::map<int64_t, std::pair<int, int64_t>> expert_at;  // offset -> (layer, expert)
  for (size_t l = 0; l < layout.layers.size(); ++l)
    for (size_t e = 0; e < layout.layers[l].experts.size(); ++e) {
      const auto& eo = layout.layers[l].experts[e];
      for (int64_t off : {eo.w1, eo.w2, eo.w3}) expert_at[off] = {static_cast<int>(l), static_cast<int64_t>(e)};
    }
  std::vector<bool>& owned = out.owned;
  owned.assign(ts.size(), false);
  out.counted.assign(ts.size(), false);
  out.group_experts.assign(placement.group_size, {});
  const int local = placement.LocalOf(rank);
  const int group = placement.GroupOf(rank);
  for (size_t i = 0; i < ts.size(); ++i) {
    const auto it = expert_at.find(ts[i].offset);
    if (it == expert_at.end()) {
      out.dense_tensors.push_back(i);
      owned[i] = placement.IsAttention(rank);
      out.counted[i] = rank == 0;  // identical on every attention rank after the sum
      continue;
    }
    const auto [l, e] = it->second;
    for (int o = 0; o < placement.group_size; ++o) {
      const ExpertRange& r = placement.owners[l][o];
      if (e < r.first || e >= r.first + r.count) continue;
      out.group_experts[o].push_back(i);
      if (o == local) {
        owned[i] = true;
        out.owned_expert_tensors.push_back(i);
        out.counted[i] = group == 0;
      }
    }
  }
}

}  // namespace

std::vector<int> ShardDenseTensors(const model::ParameterLayout& layout, const std::vector<size_t>& dense_tensors,
                                   int shards) {
  int64_t total = 0;
  for (size_t i : dense_tensors) total += layout.tensors()[i].numel;
  std::vector<int> shard;
  int64_t before = 0;
  for (size_t i : dense_tensors) {
    const int64_t n = layout.tensors()[i].numel;
    // The shard holding the tensor's middle element.
    const int64_t mid = before + n / 2;
    shard.push_back(total > 0 ? static_cast<int>(std::min<int64_t>(shards - 1, mid * shards / total)) : 0);
    before += n;
  }
  return shard;
}

Ownership::Ownership(const model::ParameterLayout& layout, const Placement& placement, int rank, bool zero_1)
    : local(layout), zero(zero_1) {
  Classify(layout, placement, rank, *this);
  local = layout.Subset(owned);
  local_offset.assign(owned.size(), -1);
  local_index.assign(owned.size(), -1);
  for (size_t i = 0, at = 0; i < owned.size(); ++i)
    if (owned[i]) {
      local_index[i] = static_cast<int64_t>(at);
      local_offset[i] = local.tensors()[at++].offset;
    }
  moments = owned;
  dense_moment_rank.assign(owned.size(), -1);
  // The dense communicator's members: attention ranks, group by group.
  std::vector<int> attention;
  for (int g = 0; g < placement.groups; ++g)
    for (int x = 0; x < placement.attention_per_group; ++x) attention.push_back(placement.GlobalRank(g, x));
  const std::vector<int> shard =
      ShardDenseTensors(layout, dense_tensors, zero ? static_cast<int>(attention.size()) : 1);
  for (size_t k = 0; k < dense_tensors.size(); ++k) {
    const size_t i = dense_tensors[k];
    dense_moment_rank[i] = attention[shard[k]];
    if (owned[i]) moments[i] = dense_moment_rank[i] == rank || !zero;
  }
}

}  // namespace hetermoe::parallel
