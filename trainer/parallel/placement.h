// Placement: who does what in a distributed run. Pure logic, no I/O.
//
// World = G ZP groups of P ranks each, rank r in group r / P at local index
// r % P. Under the zebra and sequential schedules a group has M attention
// ranks (local 0..M-1: embeddings, attention, norms, router, head; data-
// parallel with every other attention rank of every group) and N expert ranks
// (local M..M+N-1: the experts of every layer, partitioned). Under ep every
// rank of a group runs attention and holds experts (classic expert
// parallelism over P = M + N ranks).
//
// Experts of layer l: with o_l experts moved back by Asym-EA, the first
// E - o_l go to the expert ranks in contiguous ranges (as even as possible),
// the last o_l to the attention ranks (o_l / M each). Each owner therefore
// holds one contiguous range per layer, which is what a dispatch message
// carries: the rows of a micro-batch's DispatchPlan for that range.
//
// Micro-batches: the step's R micro-batches are dealt to the A = (attention
// ranks per group) x G attention ranks in contiguous blocks of R / A.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/schedule.h"

namespace hetermoe::parallel {

struct ExpertRange {
  int64_t first = 0, count = 0;
};

struct Placement {
  Schedule schedule = Schedule::kZebra;
  int groups = 1;
  int group_size = 1;           // P
  int attention_per_group = 1;  // M (P under ep)
  int layers = 0;
  int64_t experts = 0;
  int micro_batches = 1;        // R, the whole step
  int micro_per_rank = 1;       // R / (attention_per_group * groups)
  std::vector<int> offloaded;   // o_l (zebra/sequential only)
  // owners[l][local] = the range of layer l's experts held by local index.
  std::vector<std::vector<ExpertRange>> owners;

  int world_size() const { return groups * group_size; }
  int GroupOf(int rank) const { return rank / group_size; }
  int LocalOf(int rank) const { return rank % group_size; }
  int GlobalRank(int group, int local) const { return group * group_size + local; }
  bool IsAttention(int rank) const { return LocalOf(rank) < attention_per_group; }
  bool OwnsExperts(int rank, int layer) const {
    return owners[layer][LocalOf(rank)].count > 0;
  }
  // Index of an attention rank among all attention ranks (for micro-batches).
  int AttentionIndex(int rank) const {
    return GroupOf(rank) * attention_per_group + LocalOf(rank);
  }
  // Global micro-batch index of an attention rank's local micro-batch j.
  int MicroBatchOf(int rank, int j) const { return AttentionIndex(rank) * micro_per_rank + j; }
  // Which of a global batch's sequences (R = micro_batches micro-batches of
  // global_batch / R each) a rank's micro-batches hold: none on expert ranks.
  std::vector<bool> SequencesOf(int rank, int64_t global_batch, int64_t micro_batches) const;
  std::string Describe() const;  // one line per layer, for logs
  std::string ToJson() const;    // every rank's role and experts (plan.json)
};

// max / mean of the loads (1 when even; 0 when there are none or all are
// 0): the imbalance HierMoE's expert swap lowers, for metrics.
double LoadImbalance(const std::vector<double>& loads);

// Throws hetermoe::Error when the shape cannot work (R not divisible by the
// attention ranks, offloads not divisible by M or larger than an expert
// rank can give, fewer experts than expert ranks).
Placement MakePlacement(Schedule schedule, int attention_ranks, int expert_ranks, int groups,
                        int layers, int64_t experts, int micro_batches,
                        const std::vector<int>& offloaded);

}  // namespace hetermoe::parallel
