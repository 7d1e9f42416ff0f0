// The dispatch wire format: a block packs and unpacks to the same rows, with
// and without deduplication; corrupt blocks are refused; the dedup gradient
// path (sum per unique token on the owner, the sum on the token's first row
// on the attention rank) gives every token the same total as sending each
// row's gradient back.
#include "trainer/parallel/wire.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <vector>

#include "common/error.h"

namespace hetermoe::parallel::wire {
namespace {

constexpr int64_t kD = 3;

// Rows of one owner block: token ids in plan order (a token appears once per
// expert of the owner it is routed to), rows[i] = token + 0.1 * column.
struct Block {
  std::vector<int64_t> token_of_row = {4, 1, 7, 1, 4, 2};  // tokens 1 and 4 go to two experts
  std::vector<int64_t> counts = {3, 3};                    // two experts
  std::vector<float> rows;
  Block() {
    for (int64_t t : token_of_row)
      for (int64_t c = 0; c < kD; ++c) rows.push_back(static_cast<float>(t) + 0.1f * c);
  }
  int64_t size() const { return static_cast<int64_t>(token_of_row.size()); }
};

// The block's rows grouped by token.
Dedup DedupOf(const Block& b) {
  std::vector<int32_t> scratch(8, -1);
  Dedup dd;
  MakeDedup(b.token_of_row, 0, b.size(), scratch, &dd);
  return dd;
}

TEST(Wire, DedupGroupsRowsByToken) {
  const Block b;
  std::vector<int32_t> scratch(8, -1);
  Dedup dd;
  MakeDedup(b.token_of_row, 0, b.size(), scratch, &dd);
  EXPECT_EQ(dd.uniques(), 4);                                  // tokens 4, 1, 7, 2
  EXPECT_EQ(dd.index, (std::vector<int32_t>{0, 1, 2, 1, 0, 3}));
  EXPECT_EQ(dd.first, (std::vector<int64_t>{0, 1, 2, 5}));
  EXPECT_EQ(scratch, std::vector<int32_t>(8, -1)) << "the scratch is left clean";
  // A slice of the plan's rows.
  MakeDedup(b.token_of_row, 3, 3, scratch, &dd);
  EXPECT_EQ(dd.index, (std::vector<int32_t>{0, 1, 2}));
}

TEST(Wire, BlocksRoundTripWithAndWithoutDedup) {
  const Block b;
  for (bool dedup : {false, true}) {
    std::vector<int32_t> scratch(8, -1);
    Dedup dd;
    MakeDedup(b.token_of_row, 0, b.size(), scratch, &dd);
    std::vector<char> box;
    PackDispatch(b.counts.data(), 2, b.rows.data(), b.size(), kD, dedup ? &dd : nullptr, &box);
    const size_t rows_on_wire = dedup ? 4 : 6;
    EXPECT_EQ(box.size(), HeaderBytes(2, b.size(), dedup) + rows_on_wire * kD * sizeof(float));
    const DispatchBlock got = UnpackDispatch(box.data(), box.size(), 2, 100, kD, dedup);
    EXPECT_EQ(got.counts, b.counts);
    EXPECT_EQ(got.rows, 6);
    std::vector<float> rows(b.rows.size());
    if (dedup) {
      EXPECT_EQ(got.uniques, 4);
      FanOut(got, kD, rows.data());
    } else {
      std::memcpy(rows.data(), got.data, rows.size() * sizeof(float));
    }
    EXPECT_EQ(rows, b.rows) << (dedup ? "dedup" : "plain");
  }
}

TEST(Wire, CorruptBlocksAreRefused) {
  const Block b;
  const Dedup dd = DedupOf(b);
  std::vector<char> box;
  PackDispatch(b.counts.data(), 2, b.rows.data(), b.size(), kD, &dd, &box);
  auto error = [&](std::vector<char> bad, int64_t max_rows = 100) {
    try {
      UnpackDispatch(bad.data(), bad.size(), 2, max_rows, kD, true);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  EXPECT_EQ(error(box), "(accepted)");
  EXPECT_NE(error(box, 5).find("corrupt dispatch header"), std::string::npos) << "more rows than can arrive";
  std::vector<char> negative = box;
  const int64_t minus = -1;
  std::memcpy(negative.data(), &minus, sizeof minus);
  EXPECT_NE(error(negative).find("corrupt dispatch header"), std::string::npos);
  std::vector<char> bad_index = box;
  const int32_t out_of_range = 9;
  std::memcpy(bad_index.data() + 3 * sizeof(int64_t), &out_of_range, sizeof out_of_range);
  EXPECT_NE(error(bad_index).find("corrupt dedup index"), std::string::npos);
  EXPECT_NE(error(std::vector<char>(box.begin(), box.end() - 4)).find("corrupt dedup index"), std::string::npos)
      << "a truncated block";
}

// dedup auto: the word in front of a route owner's message says what
// follows, written into the room the packing left, and the block after it
// reads as packed; a bad word is refused.
TEST(Wire, RouteWordsLeadTheBlockTheySay) {
  const Block b;
  const Dedup dd = DedupOf(b);
  std::vector<char> packed, box;
  PackDispatch(b.counts.data(), 2, b.rows.data(), b.size(), kD, &dd, &packed);
  for (RouteBlock kind : {RouteBlock::kOwn, RouteBlock::kNode}) {
    PackDispatch(b.counts.data(), 2, b.rows.data(), b.size(), kD, &dd, &box, kRouteWordBytes);
    WriteRouteWord(kind, &box);
    ASSERT_EQ(box.size(), packed.size() + kRouteWordBytes);
    box.resize(box.size() + 40);  // a worst-case receive buffer
    EXPECT_EQ(ReadRouteWord(box.data(), box.size()), kind);
    EXPECT_TRUE(std::equal(packed.begin(), packed.end(), box.begin() + kRouteWordBytes));
    const DispatchBlock back =
        UnpackDispatch(box.data() + kRouteWordBytes, box.size() - kRouteWordBytes, 2, 100, kD, true);
    EXPECT_EQ(back.rows, b.size());
    EXPECT_EQ(back.uniques, 4);
  }
  box.clear();
  WriteRouteWord(RouteBlock::kRelayed, &box);
  EXPECT_EQ(ReadRouteWord(box.data(), box.size()), RouteBlock::kRelayed);
  EXPECT_EQ(box.size(), kRouteWordBytes) << "the word alone";
  auto error = [](const std::vector<char>& bad) {
    try {
      ReadRouteWord(bad.data(), bad.size());
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  std::vector<char> three(kRouteWordBytes + 4, 0);
  three[0] = 3;
  EXPECT_NE(error(three).find("corrupt dispatch header (route word 3)"), std::string::npos);
  EXPECT_NE(error(std::vector<char>(4, 0)).find("route word"), std::string::npos) << "shorter than a word";
}

TEST(Wire, DedupGradientsSumPerToken) {
  const Block b;
  const Dedup dd = DedupOf(b);
  // Each row's input grad: row index + column.
  std::vector<float> dx;
  for (int64_t r = 0; r < b.size(); ++r)
    for (int64_t c = 0; c < kD; ++c) dx.push_back(static_cast<float>(r * 10 + c));
  std::vector<float> sums(dd.uniques() * kD);
  SumByUnique(dd.index, dd.uniques(), dx.data(), kD, sums.data());
  std::vector<float> rows(dx.size(), -1.0f);
  ScatterSums(dd, sums.data(), kD, rows.data());
  // Scatter-adding the rows onto tokens gives, per token, the sum of its rows.
  std::map<int64_t, std::vector<float>> want, got;
  for (int64_t r = 0; r < b.size(); ++r) {
    auto& w = want[b.token_of_row[r]];
    auto& g = got[b.token_of_row[r]];
    w.resize(kD);
    g.resize(kD);
    for (int64_t c = 0; c < kD; ++c) {
      w[c] += dx[r * kD + c];
      g[c] += rows[r * kD + c];
    }
  }
  EXPECT_EQ(got, want);
  // Only first rows carry a sum.
  for (int64_t c = 0; c < kD; ++c) EXPECT_EQ(rows[3 * kD + c], 0.0f);  // token 1's second row
}

// The unique tokens' rows as ranges (what the device's PackSums reads) give
// the same sums as SumByUnique, and a header-only block (d = 0) round-trips.
TEST(Wire, RowsByUniqueAndHeaderOnlyBlocks) {
  const Block b;
  const Dedup dd = DedupOf(b);
  std::vector<int32_t> start, rows;
  RowsByUnique(dd.index, dd.uniques(), &start, &rows);
  EXPECT_EQ(start, (std::vector<int32_t>{0, 2, 4, 5, 6}));
  EXPECT_EQ(rows, (std::vector<int32_t>{0, 4, 1, 3, 2, 5}));
  std::vector<float> sums(dd.uniques() * kD), again(dd.uniques() * kD, 0.0f);
  SumByUnique(dd.index, dd.uniques(), b.rows.data(), kD, sums.data());
  for (int64_t u = 0; u < dd.uniques(); ++u)
    for (int32_t j = start[u]; j < start[u + 1]; ++j)
      for (int64_t c = 0; c < kD; ++c) again[u * kD + c] += b.rows[rows[j] * kD + c];
  EXPECT_EQ(again, sums);
  std::vector<char> box;
  PackDispatch(b.counts.data(), 2, nullptr, b.size(), 0, &dd, &box);
  EXPECT_EQ(box.size(), HeaderBytes(2, b.size(), true));
  const DispatchBlock got = UnpackDispatch(box.data(), box.size(), 2, 100, 0, true);
  EXPECT_EQ(got.rows, b.size());
  EXPECT_EQ(got.uniques, dd.uniques());
  EXPECT_EQ(got.index, dd.index);
}

// A node block over two owners (one expert each) splits into exactly the
// blocks the attention rank would send each owner with rank-level dedup, and
// the owners' per-token sums, added on the node, give every token the total
// of its rows' grads.
TEST(Wire, NodeBlocksSplitIntoTheOwnersBlocks) {
  const Block b;
  std::vector<int32_t> scratch(8, -1);
  Dedup node;
  MakeDedup(b.token_of_row, 0, b.size(), scratch, &node);
  std::vector<char> box;
  PackDispatch(b.counts.data(), 2, b.rows.data(), b.size(), kD, &node, &box);
  const DispatchBlock got = UnpackDispatch(box.data(), box.size(), 2, 100, kD, true);
  std::vector<NodeSplit> split;
  SplitNodeBlock(got, kD, {1, 1}, &split);
  ASSERT_EQ(split.size(), 2u);
  std::vector<Dedup> owner(2);
  for (int i = 0; i < 2; ++i) {
    MakeDedup(b.token_of_row, 3 * i, 3, scratch, &owner[i]);
    std::vector<char> want;
    PackDispatch(b.counts.data() + i, 1, b.rows.data() + 3 * i * kD, 3, kD, &owner[i], &want);
    EXPECT_EQ(split[i].box, want) << "owner " << i;
    EXPECT_EQ(split[i].rows, 3);
  }
  EXPECT_EQ(split[1].node_token, (std::vector<int32_t>{1, 0, 3}));  // tokens 1, 4, 2
  // Backward: each owner's rows' grads summed per its tokens, then per node token.
  std::vector<float> dx;
  for (int64_t r = 0; r < b.size(); ++r)
    for (int64_t c = 0; c < kD; ++c) dx.push_back(static_cast<float>(r * 10 + c));
  std::vector<float> node_sums(node.uniques() * kD, 0.0f);
  for (int i = 0; i < 2; ++i) {
    std::vector<float> sums(owner[i].uniques() * kD);
    SumByUnique(owner[i].index, owner[i].uniques(), dx.data() + 3 * i * kD, kD, sums.data());
    AddToNodeSums(split[i], sums.data(), kD, node_sums.data());
  }
  std::vector<float> rows(dx.size());
  ScatterSums(node, node_sums.data(), kD, rows.data());
  std::map<int64_t, std::vector<float>> want, have;
  for (int64_t r = 0; r < b.size(); ++r)
    for (int64_t c = 0; c < kD; ++c) {
      want[b.token_of_row[r]].resize(kD);
      have[b.token_of_row[r]].resize(kD);
      want[b.token_of_row[r]][c] += dx[r * kD + c];
      have[b.token_of_row[r]][c] += rows[r * kD + c];
    }
  EXPECT_EQ(have, want);
  EXPECT_THROW(SplitNodeBlock(got, kD, {2, 1}, &split), Error) << "more experts than the block has";
}

}  // namespace
}  // namespace hetermoe::parallel::wire
