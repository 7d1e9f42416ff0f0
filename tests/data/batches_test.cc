// The batches of data.train: the shuffled order's epochs, shards and resume
// positions, checked on token ids that spell their own positions.
#include "trainer/data/batches.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <set>

#include "common/error.h"
#include "tests/support/test_util.h"
#include "trainer/io/token_file.h"

namespace hetermoe::data {
namespace {

TEST(EpochOrder, APermutationPerSeedAndEpoch) {
  const auto a = EpochOrder(1000, 7, 0);
  std::vector<int64_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> identity(1000);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_EQ(sorted, identity);
  EXPECT_EQ(EpochOrder(1000, 7, 0), a) << "deterministic";
  EXPECT_NE(EpochOrder(1000, 7, 1), a) << "another epoch, another order";
  EXPECT_NE(EpochOrder(1000, 8, 0), a) << "another seed, another order";
  int fixed = 0;
  for (int64_t i = 0; i < 1000; ++i) fixed += a[i] == i;
  EXPECT_LT(fixed, 10) << "a shuffled order leaves about one element in place";
  EXPECT_TRUE(EpochOrder(0, 1, 0).empty());
}

// Two shards whose token at position p of shard k is 1000 k + p.
std::vector<std::vector<uint32_t>> Shards(int64_t n0, int64_t n1) {
  std::vector<std::vector<uint32_t>> s(2);
  for (int64_t p = 0; p < n0; ++p) s[0].push_back(static_cast<uint32_t>(p));
  for (int64_t p = 0; p < n1; ++p) s[1].push_back(static_cast<uint32_t>(1000 + p));
  return s;
}

TEST(ShuffledBatches, EverySequenceOncePerEpochInsideItsShard) {
  const int64_t G = 2, T = 4;
  // (21 - 1) / 4 = 5 and (13 - 1) / 4 = 3 sequences: 8, 4 batches per epoch.
  auto source = MakeBatches(Shards(21, 13), {"a", "b"}, G, T, true, 3);
  std::vector<int32_t> in(G * T), tgt(G * T);
  for (int epoch = 0; epoch < 2; ++epoch) {
    std::set<int32_t> starts;
    for (int b = 0; b < 4; ++b) {
      source->Next(in.data(), tgt.data());
      EXPECT_EQ(source->position().epoch, epoch);  // an epoch starts at the batch that needs it
      for (int64_t i = 0; i < G; ++i) {
        const int32_t first = in[i * T];
        EXPECT_EQ(first % 1000 % T, 0) << "sequences start at multiples of T";
        for (int64_t t = 0; t < T; ++t) {
          EXPECT_EQ(in[i * T + t], first + t) << "consecutive tokens of one shard";
          EXPECT_EQ(tgt[i * T + t], first + t + 1) << "targets one later";
        }
        starts.insert(first);
      }
    }
    EXPECT_EQ(starts, (std::set<int32_t>{0, 4, 8, 12, 16, 1000, 1004, 1008})) << "epoch " << epoch;
  }
}

TEST(ShuffledBatches, ASecondSourceAtTheSavedPositionReadsTheSame) {
  const int64_t G = 3, T = 4;
  auto a = MakeBatches(Shards(41, 17), {"a", "b"}, G, T, true, 11);  // 10 + 4 sequences: 4 batches, 2 dropped
  std::vector<int32_t> in(G * T), tgt(G * T), in2(G * T), tgt2(G * T);
  for (int b = 0; b < 6; ++b) a->Next(in.data(), tgt.data());  // into epoch 1
  const DataPosition saved = a->position();
  EXPECT_EQ(saved.epoch, 1);
  EXPECT_EQ(saved.position, 2 * G);
  auto b = MakeBatches(Shards(41, 17), {"a", "b"}, G, T, true, 11);
  b->set_position(saved);
  for (int i = 0; i < 9; ++i) {
    a->Next(in.data(), tgt.data());
    b->Next(in2.data(), tgt2.data());
    ASSERT_EQ(in, in2) << "batch " << i << " after the resume";
  }
  EXPECT_THROW(b->set_position({0, 15}), Error);
}

TEST(Batches, InOrderIsLlmcsReaderOverTheFilesBackToBack) {
  auto source = MakeBatches(Shards(5, 6), {"a", "b"}, 2, 3, false, 1);
  std::vector<int32_t> in(6), tgt(6);
  source->Next(in.data(), tgt.data());
  EXPECT_EQ(in, (std::vector<int32_t>{0, 1, 2, 3, 4, 1000}));
  EXPECT_EQ(tgt, (std::vector<int32_t>{1, 2, 3, 4, 1000, 1001}));
  EXPECT_EQ(source->position().position, 0) << "6 + 7 tokens would not fit the 11: back to the start";
  EXPECT_THROW(source->set_position({1, 0}), Error) << "an epoch means a shuffled run's checkpoint";
}

TEST(Batches, BadShardsNameTheFile) {
  io::testing::ScratchDir dir;
  try {
    MakeBatches(Shards(21, 4), {"a.bin", "short.bin"}, 2, 4, true, 1);
    ADD_FAILURE() << "a shard shorter than one sequence was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("short.bin: 4 tokens, fewer than one sequence of 4 + 1", 0), 0u) << e.what();
  }
  std::filesystem::create_directories(dir.Path("s"));
  for (const char* name : {"s/b.bin", "s/a.bin", "s/c.txt"}) io::WriteTokenFile(dir.Path(name), {1, 2, 3});
  EXPECT_EQ(ExpandShards({dir.Path("s/*.bin"), dir.Path("x.bin")}),
            (std::vector<std::string>{dir.Path("s/a.bin"), dir.Path("s/b.bin"), dir.Path("x.bin")}));
  io::testing::ExpectError([&] { ExpandShards({dir.Path("s/*.tok")}); }, dir.Path("s/*.tok"), "no token file matches");
}

}  // namespace
}  // namespace hetermoe::data
