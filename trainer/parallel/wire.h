// The dispatch wire format between an attention rank and one expert owner,
// as pure functions (no communication): what a (layer, micro-batch, owner)
// block carries, and HierMoE's token deduplication on it.
//
// A dispatch block is
//   counts   int64 x experts      rows for each of the owner's experts
//   [dedup]  int64                unique tokens U among the rows
//            int32 x rows         row -> unique token, padded to 8 bytes
//   rows     float x d x (U with dedup, else rows)
// Rows are in the dispatch plan's order (grouped by expert). With dedup a
// token routed to several of the owner's experts travels once; the owner
// fans it out to its rows, and on the way back sums the input grads of a
// token's rows into one row per unique token; the attention rank puts each
// sum on the token's first row and zeros on the others, so its scatter-add
// over rows gives the same per-token gradient.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace hetermoe::parallel::wire {

// Rows [row0, row0 + rows) of a dispatch plan grouped by token.
struct Dedup {
  std::vector<int32_t> index;  // [rows] row -> unique token
  std::vector<int64_t> first;  // [uniques] the first row of each unique token
  int64_t uniques() const { return static_cast<int64_t>(first.size()); }
};

// `token_of_row` is the plan's row -> token map. `scratch` has an entry per
// token of the plan, all -1, and is left that way.
void MakeDedup(const std::vector<int64_t>& token_of_row, int64_t row0, int64_t rows, std::vector<int32_t>& scratch,
               Dedup* out);

// Bytes before the rows.
size_t HeaderBytes(int64_t experts, int64_t rows, bool dedup);

// Fills `box` with one block: `counts` of the owner's experts (summing to
// `rows`), then the rows of `data` (rows x d), or with `dedup` only each
// unique token's first row. With d = 0 the block is the header alone (the
// rows travel separately: the NCCL transport); UnpackDispatch reads it
// with d = 0 too. `prefix` bytes are left free in front of the block (a
// route word, WriteRouteWord).
void PackDispatch(const int64_t* counts, int64_t experts, const float* data, int64_t rows, int64_t d,
                  const Dedup* dedup, std::vector<char>* box, size_t prefix = 0);

// A received block, read in place.
struct DispatchBlock {
  std::vector<int64_t> counts;  // [experts]
  int64_t rows = 0;
  int64_t uniques = 0;          // dedup only
  std::vector<int32_t> index;   // dedup only: row -> unique token
  const float* data = nullptr;  // rows (or unique rows with dedup) x d, inside the box
};

// Reads a block of `bytes` bytes. Throws hetermoe::Error("corrupt dispatch
// header" / "corrupt dedup index") when the counts are negative or exceed
// `max_rows`, the rows do not fit in `bytes`, or an index is out of range.
DispatchBlock UnpackDispatch(const char* box, size_t bytes, int64_t experts, int64_t max_rows, int64_t d, bool dedup);

// Dedup: the block's rows, each its unique token's row (rows x d into `out`).
void FanOut(const DispatchBlock& block, int64_t d, float* out);

// Dedup, on the owner: the input grads of each unique token's rows summed
// (`dx` rows x d -> `sums` uniques x d).
void SumByUnique(const std::vector<int32_t>& index, int64_t uniques, const float* dx, int64_t d, float* sums);

// Dedup: the rows of each unique token, as the ranges [start[u], start[u+1])
// of `rows`, in row order (what the device sums, as SumByUnique does).
void RowsByUnique(const std::vector<int32_t>& index, int64_t uniques, std::vector<int32_t>* start,
                  std::vector<int32_t>* rows);

// Dedup, on the attention rank: each unique token's sum on its first row,
// zeros on the others (`out` rows x d).
void ScatterSums(const Dedup& dedup, const float* sums, int64_t d, float* out);

// Node-level deduplication (HierMoE's hierarchy). Where several expert
// ranks of one node hold experts a token is routed to, the attention rank
// sends the node one dedup block over the node's experts (their ranges are
// adjacent), to the node's first owner, which splits it into each owner's
// block (the block an attention rank sends with rank-level dedup) and on the
// way back adds the owners' per-token sums into one row per node token.
struct NodeSplit {
  std::vector<char> box;            // the owner's dedup block, rows included
  std::vector<int32_t> node_token;  // [the owner's unique tokens] the node block's unique token of each
  int64_t rows = 0;                 // routed rows in the owner's block
};

// Splits a received node block (dedup, with rows) among the owners holding
// experts_per_owner[i] of its experts, in order. `out` gets one per owner.
void SplitNodeBlock(const DispatchBlock& node, int64_t d, const std::vector<int64_t>& experts_per_owner,
                    std::vector<NodeSplit>* out);

// Backward, on the node's first owner: an owner's per-token input-grad sums
// (uniques x d, in its block's unique order) added into the node block's
// per-token sums.
void AddToNodeSums(const NodeSplit& owner, const float* owner_sums, int64_t d, float* node_sums);

// With the depth chosen per block (dedup auto), an attention rank's message
// to each owner of a route starts with one of these words, so that the
// owner learns how the rows come: its own block follows (rank level), the
// node's block follows (node level, to the route's first owner), or nothing
// follows and the first owner relays the rows (node level, to the others).
enum class RouteBlock : int64_t { kOwn = 0, kNode = 1, kRelayed = 2 };
inline constexpr size_t kRouteWordBytes = sizeof(int64_t);

// Writes the word into the first kRouteWordBytes of `box` (a block packed
// with that prefix left free, or an empty box for kRelayed), in place.
void WriteRouteWord(RouteBlock kind, std::vector<char>* box);

// The word at the front of a received message of `bytes` bytes; the block
// follows it. Throws hetermoe::Error("corrupt dispatch header (route word)").
RouteBlock ReadRouteWord(const char* box, size_t bytes);

}  // namespace hetermoe::parallel::wire
