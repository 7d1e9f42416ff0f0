// Tests of trainer/io/token_file: llm.c-format files with and without the
// header, id validation, and the batch reader's order and
// wrap-around on examples small enough to check by hand.
#include "trainer/io/token_file.h"

#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/error.h"
#include "tests/support/test_util.h"

namespace hetermoe::io {
namespace {

using testing::ExpectError;
using testing::ScratchDir;

template <typename T>
std::string Raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// llm.c's 256 x int32 header.
std::string Header(int32_t version, int32_t count) {
  std::vector<int32_t> h(256, 0);
  h[0] = 20240520;
  h[1] = version;
  h[2] = count;
  return Raw(h);
}

TEST(TokenFileTest, WriteThenLoadUint16WithHeader) {
  ScratchDir dir;
  const std::string path = dir.Path("t.bin");
  const std::vector<uint32_t> tokens = {0, 1, 65535, 42};
  WriteTokenFile(path, tokens);
  // The bytes are exactly llm.c's: header (version 1) then uint16 ids.
  EXPECT_EQ(ScratchDir::ReadFile(path), Header(1, 4) + Raw(std::vector<uint16_t>{0, 1, 65535, 42}));
  EXPECT_EQ(LoadTokenFile(path, 65536), tokens);
}

TEST(TokenFileTest, WriteThenLoadUint32WhenAnIdNeedsIt) {
  ScratchDir dir;
  const std::string path = dir.Path("t.bin");
  const std::vector<uint32_t> tokens = {65536, 3, 200000};
  WriteTokenFile(path, tokens);
  EXPECT_EQ(ScratchDir::ReadFile(path), Header(2, 3) + Raw(tokens));
  EXPECT_EQ(LoadTokenFile(path, 200001), tokens);
}

TEST(TokenFileTest, LoadWithoutHeader) {
  ScratchDir dir;
  // uint16 when the vocabulary fits in 16 bits...
  const std::string small = dir.WriteFile("small.bin", Raw(std::vector<uint16_t>{7, 0, 255}));
  EXPECT_EQ(LoadTokenFile(small, 256), (std::vector<uint32_t>{7, 0, 255}));
  // ...uint32 above.
  const std::string big = dir.WriteFile("big.bin", Raw(std::vector<uint32_t>{70000, 1}));
  EXPECT_EQ(LoadTokenFile(big, 100000), (std::vector<uint32_t>{70000, 1}));
  // A headerless file shorter than a header is fine too.
  const std::string one = dir.WriteFile("one.bin", Raw(std::vector<uint16_t>{9}));
  EXPECT_EQ(LoadTokenFile(one, 10), std::vector<uint32_t>{9});
}

TEST(TokenFileTest, IdOutsideVocabularyNamesPositionAndId) {
  ScratchDir dir;
  const std::string headerless = dir.WriteFile("a.bin", Raw(std::vector<uint16_t>{1, 2, 300, 4}));
  ExpectError([&] { LoadTokenFile(headerless, 256); }, headerless,
              "token at position 2 (byte offset 4) is 300, not below the vocabulary size 256");
  const std::string with_header = dir.Path("b.bin");
  WriteTokenFile(with_header, {5, 6, 7});
  ExpectError([&] { LoadTokenFile(with_header, 7); }, with_header,
              "token at position 2 (byte offset 1028) is 7, not below the vocabulary size 7");
}

TEST(TokenFileTest, MalformedFiles) {
  ScratchDir dir;
  const std::string empty = dir.WriteFile("empty.bin", "");
  ExpectError([&] { LoadTokenFile(empty, 256); }, empty, "empty token file");
  const std::string odd = dir.WriteFile("odd.bin", "abc");
  ExpectError([&] { LoadTokenFile(odd, 256); }, odd,
              "file size 3 is not a multiple of the 2-byte token size");
  const std::string odd32 = dir.WriteFile("odd32.bin", "abcdef");
  ExpectError([&] { LoadTokenFile(odd32, 70000); }, odd32,
              "file size 6 is not a multiple of the 4-byte token size");
  const std::string short_body = dir.WriteFile("short.bin", Header(1, 3) + Raw(std::vector<uint16_t>{1, 2}));
  ExpectError([&] { LoadTokenFile(short_body, 256); }, short_body,
              "llm.c header says 3 tokens of 2 bytes but 4 bytes of tokens follow it");
  const std::string version = dir.WriteFile("version.bin", Header(7, 1) + "xx");
  ExpectError([&] { LoadTokenFile(version, 256); }, version, "llm.c header version 7 is not supported");
  const std::string no_tokens = dir.WriteFile("none.bin", Header(1, 0));
  ExpectError([&] { LoadTokenFile(no_tokens, 256); }, no_tokens, "llm.c header says the file holds 0 tokens");
  const std::string missing = dir.Path("missing.bin");
  ExpectError([&] { LoadTokenFile(missing, 256); }, missing, "cannot open: No such file or directory");
  ExpectError([&] { WriteTokenFile(dir.Path("w.bin"), {}); }, dir.Path("w.bin"), "no tokens to write");
}

// Nine tokens 0..8, B = 2 sequences of T = 2: a batch needs B*T+1 = 5.
//   batch at 0: inputs [[0,1],[2,3]], targets [[1,2],[3,4]]; next 4 (4+5 <= 9)
//   batch at 4: inputs [[4,5],[6,7]], targets [[5,6],[7,8]]; next 8 -> 0
//   batch at 0 again.
TEST(BatchReaderTest, ReadsInLlmcOrderAndWraps) {
  std::vector<uint32_t> tokens(9);
  std::iota(tokens.begin(), tokens.end(), 0u);
  BatchReader reader(&tokens, 2, 2, "tokens.bin");
  int32_t in[4], tg[4];
  using V = std::vector<int32_t>;
  EXPECT_EQ(reader.position(), 0);
  reader.Next(in, tg);
  EXPECT_EQ(V(in, in + 4), (V{0, 1, 2, 3}));
  EXPECT_EQ(V(tg, tg + 4), (V{1, 2, 3, 4}));
  EXPECT_EQ(reader.position(), 4);
  reader.Next(in, tg);
  EXPECT_EQ(V(in, in + 4), (V{4, 5, 6, 7}));
  EXPECT_EQ(V(tg, tg + 4), (V{5, 6, 7, 8}));
  EXPECT_EQ(reader.position(), 0);
  reader.Next(in, tg);
  EXPECT_EQ(V(in, in + 4), (V{0, 1, 2, 3}));
}

// With one token fewer (8), the second batch no longer fits: every batch is
// the first one.
TEST(BatchReaderTest, WrapsAsSoonAsTheNextBatchDoesNotFit) {
  std::vector<uint32_t> tokens = {10, 11, 12, 13, 14, 15, 16, 17};
  BatchReader reader(&tokens, 2, 2, "tokens.bin");
  int32_t in[4], tg[4];
  for (int step = 0; step < 3; ++step) {
    reader.Next(in, tg);
    EXPECT_EQ(reader.position(), 0);
    EXPECT_EQ(std::vector<int32_t>(in, in + 4), (std::vector<int32_t>{10, 11, 12, 13}));
    EXPECT_EQ(std::vector<int32_t>(tg, tg + 4), (std::vector<int32_t>{11, 12, 13, 14}));
  }
}

TEST(BatchReaderTest, SetPositionResumes) {
  std::vector<uint32_t> tokens(9);
  std::iota(tokens.begin(), tokens.end(), 0u);
  BatchReader reader(&tokens, 1, 3, "tokens.bin");  // batch needs 4: starts 0..5
  reader.set_position(5);
  int32_t in[3], tg[3];
  reader.Next(in, tg);
  EXPECT_EQ(std::vector<int32_t>(in, in + 3), (std::vector<int32_t>{5, 6, 7}));
  EXPECT_EQ(std::vector<int32_t>(tg, tg + 3), (std::vector<int32_t>{6, 7, 8}));
  EXPECT_EQ(reader.position(), 0);  // 8 + 4 > 9
  ExpectError([&] { reader.set_position(6); }, "tokens.bin", "position 6 is outside [0, 5]");
  ExpectError([&] { reader.set_position(-1); }, "tokens.bin", "position -1 is outside");
}

TEST(BatchReaderTest, TooFewTokensForOneBatch) {
  std::vector<uint32_t> tokens(4);  // B*T+1 = 5
  ExpectError([&] { BatchReader(&tokens, 2, 2, "tokens.bin"); }, "tokens.bin",
              "4 tokens are fewer than one batch of 2 x 2 + 1");
  std::vector<uint32_t> five(5);
  EXPECT_NO_THROW(BatchReader(&five, 2, 2, "tokens.bin"));
  ExpectError([&] { BatchReader(&five, 0, 2, "tokens.bin"); }, "tokens.bin", "must be positive");
  ExpectError([&] { BatchReader(&five, int64_t{1} << 40, int64_t{1} << 40, "tokens.bin"); }, "tokens.bin",
              "fewer than one batch");
}

}  // namespace
}  // namespace hetermoe::io
