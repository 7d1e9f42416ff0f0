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

using io::testing::ExpectError;
using io::testing::ScratchDir;

// Token files a.bin, b.bin, ... in `dir` holding the given tokens.
std::vector<io::TokenFile> Files(const ScratchDir& dir, const std::vector<std::vector<uint32_t>>& tokens) {
  std::vector<io::TokenFile> files;
  for (size_t k = 0; k < tokens.size(); ++k) {
    const std::string path = dir.Path(std::string(1, static_cast<char>('a' + k)) + ".bin");
    io::WriteTokenFile(path, tokens[k]);
    files.emplace_back(path, 4096);
  }
  return files;
}

// Two shards whose token at position p of shard k is 1000 k + p.
std::vector<io::TokenFile> Shards(const ScratchDir& dir, int64_t n0, int64_t n1) {
  std::vector<std::vector<uint32_t>> s(2);
  for (int64_t p = 0; p < n0; ++p) s[0].push_back(static_cast<uint32_t>(p));
  for (int64_t p = 0; p < n1; ++p) s[1].push_back(static_cast<uint32_t>(1000 + p));
  return Files(dir, s);
}

std::vector<uint32_t> Iota(uint32_t n, uint32_t from = 0) {
  std::vector<uint32_t> v(n);
  std::iota(v.begin(), v.end(), from);
  return v;
}

using V = std::vector<int32_t>;

TEST(ShuffledBatches, EverySequenceOncePerEpochInsideItsShard) {
  const int64_t G = 2, T = 4;
  // (21 - 1) / 4 = 5 and (13 - 1) / 4 = 3 sequences: 8, 4 batches per epoch.
  ScratchDir dir;
  auto source = MakeBatches(Shards(dir, 21, 13), G, T, true, 3);
  std::vector<int32_t> in(G * T), tgt(G * T);
  for (int epoch = 0; epoch < 2; ++epoch) {
    std::set<int32_t> starts;
    for (int b = 0; b < 4; ++b) {
      source->Next(in.data(), tgt.data(), {});
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
  ScratchDir dir;
  auto a = MakeBatches(Shards(dir, 41, 17), G, T, true, 11);  // 10 + 4 sequences: 4 batches, 2 dropped
  std::vector<int32_t> in(G * T), tgt(G * T), in2(G * T), tgt2(G * T);
  for (int b = 0; b < 6; ++b) a->Next(in.data(), tgt.data(), {});  // into epoch 1
  const DataPosition saved = a->position();
  EXPECT_EQ(saved.epoch, 1);
  EXPECT_EQ(saved.position, 2 * G);
  auto b = MakeBatches(Shards(dir, 41, 17), G, T, true, 11);
  b->set_position(saved);
  for (int i = 0; i < 9; ++i) {
    a->Next(in.data(), tgt.data(), {});
    b->Next(in2.data(), tgt2.data(), {});
    ASSERT_EQ(in, in2) << "batch " << i << " after the resume";
  }
  EXPECT_THROW(b->set_position({0, 15}), Error);
}

TEST(Batches, InOrderIsLlmcsReaderOverTheFilesBackToBack) {
  ScratchDir dir;
  auto source = MakeBatches(Shards(dir, 5, 6), 2, 3, false, 1);
  std::vector<int32_t> in(6), tgt(6);
  source->Next(in.data(), tgt.data(), {});
  EXPECT_EQ(in, (std::vector<int32_t>{0, 1, 2, 3, 4, 1000}));
  EXPECT_EQ(tgt, (std::vector<int32_t>{1, 2, 3, 4, 1000, 1001}));
  EXPECT_EQ(source->position().position, 0) << "6 + 7 tokens would not fit the 11: back to the start";
  EXPECT_THROW(source->set_position({1, 0}), Error) << "an epoch means a shuffled run's checkpoint";
}

TEST(Batches, BadShardsNameTheFile) {
  ScratchDir dir;
  ExpectError([&] { MakeBatches(Shards(dir, 21, 4), 2, 4, true, 1); }, dir.Path("b.bin"),
              "4 tokens, fewer than one sequence of 4 + 1");
  std::filesystem::create_directories(dir.Path("s"));
  for (const char* name : {"s/b.bin", "s/a.bin", "s/c.txt"}) io::WriteTokenFile(dir.Path(name), {1, 2, 3});
  EXPECT_EQ(ExpandShards({dir.Path("s/*.bin"), dir.Path("x.bin")}),
            (std::vector<std::string>{dir.Path("s/a.bin"), dir.Path("s/b.bin"), dir.Path("x.bin")}));
  io::testing::ExpectError([&] { ExpandShards({dir.Path("s/*.tok")}); }, dir.Path("s/*.tok"), "no token file matches");
}

// llm.c's order, by hand. Nine tokens 0..8, G = 2 sequences of T = 2: a
// batch needs G*T + 1 = 5.
//   batch at 0: inputs [[0,1],[2,3]], targets [[1,2],[3,4]]; next 4 (4+5 <= 9)
//   batch at 4: inputs [[4,5],[6,7]], targets [[5,6],[7,8]]; next 8 -> 0
//   batch at 0 again.
TEST(InOrderBatches, ReadsInLlmcOrderAndWraps) {
  ScratchDir dir;
  auto source = MakeBatches(Files(dir, {Iota(9)}), 2, 2, false, 0);
  V in(4), tg(4);
  EXPECT_EQ(source->position().position, 0);
  source->Next(in.data(), tg.data(), {});
  EXPECT_EQ(in, (V{0, 1, 2, 3}));
  EXPECT_EQ(tg, (V{1, 2, 3, 4}));
  EXPECT_EQ(source->position().position, 4);
  source->Next(in.data(), tg.data(), {});
  EXPECT_EQ(in, (V{4, 5, 6, 7}));
  EXPECT_EQ(tg, (V{5, 6, 7, 8}));
  EXPECT_EQ(source->position().position, 0);
  source->Next(in.data(), tg.data(), {});
  EXPECT_EQ(in, (V{0, 1, 2, 3}));
}

// With one token fewer (8), the second batch no longer fits: every batch is
// the first one.
TEST(InOrderBatches, WrapsAsSoonAsTheNextBatchDoesNotFit) {
  ScratchDir dir;
  auto source = MakeBatches(Files(dir, {Iota(8, 10)}), 2, 2, false, 0);
  V in(4), tg(4);
  for (int step = 0; step < 3; ++step) {
    source->Next(in.data(), tg.data(), {});
    EXPECT_EQ(source->position().position, 0);
    EXPECT_EQ(in, (V{10, 11, 12, 13}));
    EXPECT_EQ(tg, (V{11, 12, 13, 14}));
  }
}

TEST(InOrderBatches, SetPositionResumes) {
  ScratchDir dir;
  auto source = MakeBatches(Files(dir, {Iota(9)}), 1, 3, false, 0);  // a batch needs 4: starts 0..5
  source->set_position({0, 5});
  V in(3), tg(3);
  source->Next(in.data(), tg.data(), {});
  EXPECT_EQ(in, (V{5, 6, 7}));
  EXPECT_EQ(tg, (V{6, 7, 8}));
  EXPECT_EQ(source->position().position, 0);  // 8 + 4 > 9
  ExpectError([&] { source->set_position({0, 6}); }, dir.Path("a.bin"), "position 6 is outside [0, 5]");
  ExpectError([&] { source->set_position({0, -1}); }, dir.Path("a.bin"), "position -1 is outside");
}

TEST(InOrderBatches, TooFewTokensForOneBatch) {
  ScratchDir dir;
  ExpectError([&] { MakeBatches(Files(dir, {Iota(4)}), 2, 2, false, 0); }, dir.Path("a.bin"),
              "4 tokens are fewer than one batch of 2 x 2 + 1");
  EXPECT_NO_THROW(MakeBatches(Files(dir, {Iota(5)}), 2, 2, false, 0));
  ExpectError([&] { MakeBatches(Files(dir, {Iota(5)}), 0, 2, false, 0); }, dir.Path("a.bin"), "must be positive");
  ExpectError([&] { MakeBatches(Files(dir, {Iota(5)}), int64_t{1} << 40, int64_t{1} << 40, false, 0); },
              dir.Path("a.bin"), "fewer than one batch");
}

// A rank reads only the sequences it asks for: the others' rows stay as they
// were and their tokens are not read; the position advances the same.
TEST(Batches, ReadOnlyTheWantedSequences) {
  for (const bool shuffle : {false, true}) {
    ScratchDir dir;
    const int64_t G = 4, T = 3;
    const std::vector<io::TokenFile> files = Shards(dir, 40, 30);
    auto all = MakeBatches(files, G, T, shuffle, 5);
    auto some = MakeBatches(files, G, T, shuffle, 5);  // copies count their own bytes
    const std::vector<bool> wanted = {false, true, true, false};
    V in(G * T), tg(G * T), in2(G * T, -7), tg2(G * T, -7);
    for (int b = 0; b < 7; ++b) {
      all->Next(in.data(), tg.data(), {});
      some->Next(in2.data(), tg2.data(), wanted);
      for (int64_t i = 0; i < G; ++i)
        for (int64_t t = 0; t < T; ++t) {
          EXPECT_EQ(in2[i * T + t], wanted[i] ? in[i * T + t] : -7) << "shuffle " << shuffle << ", row " << i;
          EXPECT_EQ(tg2[i * T + t], wanted[i] ? tg[i * T + t] : -7) << "shuffle " << shuffle << ", row " << i;
        }
      EXPECT_EQ(some->position().position, all->position().position);
      EXPECT_EQ(some->position().epoch, all->position().epoch);
    }
    // Each sequence read is T + 1 uint16 ids.
    EXPECT_EQ(all->bytes_read(), 7u * G * (T + 1) * 2) << "shuffle " << shuffle;
    EXPECT_EQ(some->bytes_read(), 7u * 2 * (T + 1) * 2) << "shuffle " << shuffle;
  }
}

// Out-of-vocabulary ids are found where a batch reads them, naming the file.
TEST(Batches, AnIdOutsideTheVocabularyNamesTheFileWhenRead) {
  ScratchDir dir;
  std::vector<uint32_t> tokens = Iota(20);
  tokens[12] = 5000;  // the vocabulary of Files() is 4096
  auto source = MakeBatches(Files(dir, {tokens}), 2, 3, false, 0);
  V in(6), tg(6);
  source->Next(in.data(), tg.data(), {});  // tokens 0..6
  ExpectError([&] { source->Next(in.data(), tg.data(), {}); }, dir.Path("a.bin"),  // tokens 6..12
              "token at position 12 (byte offset 1048) is 5000, not below the vocabulary size 4096");
}

}  // namespace
}  // namespace hetermoe::data
