// Which of the model's tensors a rank of a distributed run holds: pure
// logic over the layout and the placement (no communication).
//
// Attention ranks hold the dense (non-expert) tensors, replicated over every
// attention rank of every group, plus the experts Asym-EA moved to them;
// expert ranks hold their experts, replicated over the groups. A rank
// allocates, updates and checkpoints only what it holds, packed into its own
// buffers by `local` (ParameterLayout::Subset). In the global gradient norm
// each tensor counts once over the world: the dense ones on rank 0, each
// expert on its holder in group 0.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "trainer/model/parameters.h"
#include "trainer/parallel/placement.h"

namespace hetermoe::parallel {

struct Ownership {
  // zero: ZeRO-1, the AdamW moments of the dense tensors sharded over the
  // attention ranks of every group (contiguous runs of the layout's dense
  // tensors of about equal size, in the order of the dense communicator:
  // group by group, attention rank by attention rank).
  Ownership(const model::ParameterLayout& layout, const Placement& placement, int rank, bool zero = false);

  std::vector<bool> owned;    // per tensor of the layout
  std::vector<bool> counted;  // per tensor: counted in the global norm by this rank
  std::vector<size_t> dense_tensors;         // every non-expert tensor (whoever holds them)
  std::vector<size_t> owned_expert_tensors;  // the experts this rank holds
  // Per local rank of a group: the expert tensors it holds (rank 0 fetches
  // group 0's at a checkpoint).
  std::vector<std::vector<size_t>> group_experts;
  model::ParameterLayout local;       // the held tensors, packed
  std::vector<int64_t> local_offset;  // per tensor: its offset in `local`'s buffers, -1 when not held
  std::vector<int64_t> local_index;   // per tensor: its index in local.tensors(), -1 when not held
  // Per tensor: this rank keeps (and updates) its AdamW moments: every held
  // tensor, or with ZeRO-1 the held experts and its shard of the dense ones.
  std::vector<bool> moments;
  // Per tensor: the global rank whose moments of a dense tensor a checkpoint
  // reads (with ZeRO-1 its shard's attention rank; else rank 0); -1 for experts.
  std::vector<int> dense_moment_rank;
  bool zero = false;
};

// ZeRO-1's shard of each dense tensor: an index in [0, shards), contiguous
// runs of about total / shards elements, in layout order. Pure.
std::vector<int> ShardDenseTensors(const model::ParameterLayout& layout, const std::vector<size_t>& dense_tensors,
                                   int shards);

}  // namespace hetermoe::parallel
