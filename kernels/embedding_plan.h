// How the embedding backward sums rows per token id in parallel and in a
// fixed order (kernels/embedding.cuh): pure host logic, from the batch's
// token ids, which the host has anyway.
//
// The positions are grouped by id (in order within an id). Pass 0 sums them
// in segments of at most kEmbeddingSegmentRows rows of one id each; every
// later pass sums the previous pass's segment sums the same way, until each
// id has one sum, which the last pass adds into the id's row of the table's
// gradient. So no thread adds more than kEmbeddingSegmentRows terms in a row,
// whatever the batch (a frequent token too), in log_32(N) passes; a batch
// whose ids repeat at most 32 times takes one pass.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace hetermoe::kernels {

constexpr int64_t kEmbeddingSegmentRows = 32;

struct EmbeddingGradPlan {
  std::vector<int32_t> rows;                 // pass 0's input: dout rows, grouped by id, in order
  std::vector<std::vector<int32_t>> starts;  // per pass: segment s sums input rows [starts[s], starts[s+1])
  std::vector<int32_t> ids;                  // the last pass: each segment's token id
  int64_t partial_rows = 0;                  // the most segments of a pass before the last (its output rows)

  // The plan as one int32 array for the device: rows, each pass's starts,
  // ids; and where each part begins in it.
  std::vector<int32_t> Packed() const;
  int64_t StartsAt(size_t pass) const;
  int64_t IdsAt() const;
};

// ids[N] (any values; the caller checks them against the vocabulary).
EmbeddingGradPlan MakeEmbeddingGradPlan(const int32_t* ids, int64_t N);

}  // namespace hetermoe::kernels
