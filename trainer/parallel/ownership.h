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
  Ownership(const model::ParameterLayout& layout, const Placement& placement, int rank);

  std::vector<bool> owned;    // per tensor of the layout
  std::vector<bool> counted;  // per tensor: counted in the global norm by this rank
  std::vector<size_t> dense_tensors;         // every non-expert tensor (whoever holds them)
  std::vector<size_t> owned_expert_tensors;  // the experts this rank holds
  // Per local rank of a group: the expert tensors it holds (rank 0 fetches
  // group 0's at a checkpoint).
  std::vector<std::vector<size_t>> group_experts;
  model::ParameterLayout local;       // the held tensors, packed
  std::vector<int64_t> local_offset;  // per tensor: its offset in `local`'s buffers, -1 when not held
};

}  // namespace hetermoe::parallel
