// Which tensors each rank holds: over every rank of a run, each tensor is
// held where the placement puts it (dense on every attention rank, each
// expert once per group), counted once in the global norm, and packed into
// the rank's own buffers without gaps or overlaps.
#include "trainer/parallel/ownership.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace hetermoe::parallel {
namespace {

io::MixtralConfig Tiny() {
  io::MixtralConfig c;
  c.vocab_size = 16;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.num_local_experts = 8;
  return c;
}

bool IsExpert(const std::string& name) { return name.find(".block_sparse_moe.experts.") != std::string::npos; }

int ExpertOf(const std::string& name) {
  const std::string key = ".block_sparse_moe.experts.";
  return std::stoi(name.substr(name.find(key) + key.size()));
}

int LayerOf(const std::string& name) { return std::stoi(name.substr(std::string("model.layers.").size())); }

void CheckRun(const Placement& p, const model::ParameterLayout& layout) {
  const auto& ts = layout.tensors();
  std::vector<int> counted(ts.size(), 0);
  std::vector<std::vector<int>> holders_per_group(p.groups, std::vector<int>(ts.size(), 0));
  for (int rank = 0; rank < p.world_size(); ++rank) {
    const Ownership own(layout, p, rank);
    int64_t packed = 0;
    for (size_t i = 0; i < ts.size(); ++i) {
      if (own.counted[i]) ++counted[i];
      const bool expert = IsExpert(ts[i].name);
      bool should = !expert && p.IsAttention(rank);
      if (expert) {
        const ExpertRange& r = p.owners[LayerOf(ts[i].name)][p.LocalOf(rank)];
        should = ExpertOf(ts[i].name) >= r.first && ExpertOf(ts[i].name) < r.first + r.count;
      }
      EXPECT_EQ(own.owned[i], should) << "rank " << rank << " " << ts[i].name;
      if (!own.owned[i]) {
        EXPECT_EQ(own.local_offset[i], -1);
        EXPECT_FALSE(own.counted[i]);
        continue;
      }
      if (expert) ++holders_per_group[p.GroupOf(rank)][i];
      // Packed in layout order, no gaps.
      EXPECT_EQ(own.local_offset[i], packed) << ts[i].name;
      packed += ts[i].numel;
      const model::TensorSlot* slot = own.local.Find(ts[i].name);
      ASSERT_NE(slot, nullptr);
      EXPECT_EQ(slot->offset, own.local_offset[i]);
    }
    EXPECT_EQ(own.local.total(), packed) << "rank " << rank;
    // Absent tensors are not reachable through the local layout's named offsets.
    if (!p.IsAttention(rank)) EXPECT_EQ(own.local.embed, model::ParameterLayout::kAbsent);
  }
  for (size_t i = 0; i < ts.size(); ++i) {
    EXPECT_EQ(counted[i], 1) << ts[i].name << " counted " << counted[i] << " times in the norm";
    if (IsExpert(ts[i].name))
      for (int g = 0; g < p.groups; ++g) EXPECT_EQ(holders_per_group[g][i], 1) << ts[i].name << " group " << g;
  }
}

TEST(Ownership, EveryTensorHasItsHoldersAndCountsOnce) {
  const model::ParameterLayout layout(Tiny());
  CheckRun(MakePlacement(Schedule::kZebra, 1, 3, 1, 3, 8, 4, {}), layout);       // 8 experts over 3: 3, 3, 2
  CheckRun(MakePlacement(Schedule::kZebra, 2, 2, 1, 3, 8, 4, {2, 0, 4}), layout);  // Asym-EA
  CheckRun(MakePlacement(Schedule::kZebra, 1, 1, 2, 3, 8, 4, {}), layout);       // two groups
  CheckRun(MakePlacement(Schedule::kEp, 1, 1, 2, 3, 8, 8, {}), layout);          // ep: every rank runs attention
}

TEST(Ownership, ExpertRanksHoldOnlyTheirShare) {
  const model::ParameterLayout layout(Tiny());
  const Placement p = MakePlacement(Schedule::kZebra, 1, 3, 1, 3, 8, 4, {});
  const Ownership attention(layout, p, 0), expert(layout, p, 3);
  int64_t experts_total = 0;
  for (const auto& t : layout.tensors())
    if (IsExpert(t.name)) experts_total += t.numel;
  // Rank 3 holds 2 of 8 experts in each layer; rank 0 the dense model only.
  EXPECT_EQ(expert.local.total() * 4, experts_total);
  EXPECT_EQ(attention.local.total(), layout.total() - experts_total);
  EXPECT_EQ(expert.owned_expert_tensors.size(), 3u * 2 * 3);  // 3 layers x 2 experts x w1,w2,w3
  EXPECT_EQ(attention.group_experts[3], expert.owned_expert_tensors);
}

}  // namespace
}  // namespace hetermoe::parallel
