// Tests of trainer/io/token_file: llm.c-format files with and without the
// header, 64-bit counts, id validation where tokens are read.
#include "trainer/io/token_file.h"

#include <sys/resource.h>

#include <cstring>
#include <filesystem>
#include <fstream>
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

long PeakRssKib() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
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

// Files of 2^31 tokens and more: the header carries a 64-bit count, which
// llm.c's int32 cannot.
TEST(TokenFileTest, HeaderCountsAre64Bit) {
  const auto small = EncodeTokenHeader(5, 2);
  EXPECT_EQ(small[2], 5);
  EXPECT_EQ(small[3], 0);
  const int64_t big = (int64_t{1} << 32) + 7;  // 2^32 + 7 does not fit an int32
  const auto wide = EncodeTokenHeader(big, 4);
  EXPECT_EQ(wide[1], 2);
  EXPECT_EQ(wide[2], -1);
  EXPECT_EQ(wide[3], 7);
  EXPECT_EQ(wide[4], 1);
  EXPECT_EQ(EncodeTokenHeader(int64_t{1} << 31, 2)[2], -1) << "2^31 is one more than int32 holds";
}

// A sparse file of 2^31 + 8 uint16 tokens (4 GiB, almost no disk): opening
// it reads none of it, reading the last tokens touches only their page, and
// positions past 2^31 are addressed exactly.
TEST(TokenFileTest, ReadsPast2To31TokensTouchingOnlyWhatItReads) {
  ScratchDir dir;
  const int64_t count = (int64_t{1} << 31) + 8;
  const std::string path = dir.Path("big.bin");
  {
    const auto header = EncodeTokenHeader(count, 2);
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(header.data()), sizeof header);
    out.seekp(static_cast<std::streamoff>(sizeof header + (count - 4) * 2));
    const std::vector<uint16_t> tail = {11, 12, 13, 14};
    out.write(reinterpret_cast<const char*>(tail.data()), 8);
  }
  ASSERT_EQ(std::filesystem::file_size(path), 1024u + static_cast<uint64_t>(count) * 2);
  const long before = PeakRssKib();
  const TokenFile file(path, 100);
  EXPECT_EQ(file.size(), count);
  std::vector<uint32_t> got(6);
  file.Read(count - 6, 6, got.data());
  EXPECT_EQ(got, (std::vector<uint32_t>{0, 0, 11, 12, 13, 14}));
  EXPECT_EQ(file.bytes_read(), 12u);
  EXPECT_LT(PeakRssKib() - before, 16 * 1024) << "KiB: a 4 GiB file must not be read to open it";
  ExpectError([&] { file.Read(count - 2, 3, got.data()); }, path, "are outside the file's 2147483656");
  // A count the bytes do not match is still refused.
  const auto header = EncodeTokenHeader(count, 2);
  const std::string cut = dir.WriteFile("cut.bin", Raw(std::vector<int32_t>(header.begin(), header.end())) + "xxxx");
  ExpectError([&] { TokenFile(cut, 100); }, cut, "llm.c header says 2147483656 tokens of 2 bytes but 4 bytes");
}

// The streaming writer: ids in several appends give the same bytes as one
// WriteTokenFile; 4-byte ids; an id too wide for 2 bytes, or no ids at all,
// is an error naming the file, and leaves no file behind.
TEST(TokenFileWriterTest, StreamsTheSameFileAndLeavesNothingOnError) {
  ScratchDir dir;
  const std::vector<uint32_t> ids = {3, 1, 4, 1, 5, 9, 2, 6};
  WriteTokenFile(dir.Path("whole.bin"), ids);
  {
    TokenFileWriter out(dir.Path("streamed.bin"), 2);
    out.Append(ids.data(), 3);
    out.Append(ids.data() + 3, 0);
    out.Append(ids.data() + 3, 5);
    EXPECT_EQ(out.count(), 8);
    out.Finish();
  }
  EXPECT_EQ(ScratchDir::ReadFile(dir.Path("streamed.bin")), ScratchDir::ReadFile(dir.Path("whole.bin")));
  {
    TokenFileWriter out(dir.Path("wide.bin"), 4);
    const std::vector<uint32_t> wide = {70000, 1};
    out.Append(wide.data(), wide.size());
    out.Finish();
  }
  EXPECT_EQ(LoadTokenFile(dir.Path("wide.bin"), 70001), (std::vector<uint32_t>{70000, 1}));
  const std::string narrow = dir.Path("narrow.bin");
  ExpectError([&] {
    TokenFileWriter out(narrow, 2);
    const uint32_t too_wide = 65536;
    out.Append(&too_wide, 1);
  }, narrow, "token 65536 does not fit the file's 2-byte ids");
  EXPECT_FALSE(std::filesystem::exists(narrow)) << "a failed write leaves no file";
  const std::string empty = dir.Path("empty.bin");
  ExpectError([&] { TokenFileWriter(empty, 2).Finish(); }, empty, "no tokens to write");
  EXPECT_FALSE(std::filesystem::exists(empty));
}

TEST(TokenFileTest, ReadsChecksIdsOnlyWhereItReads) {
  ScratchDir dir;
  const std::string path = dir.WriteFile("a.bin", Raw(std::vector<uint16_t>{1, 2, 300, 4}));
  const TokenFile file(path, 256);  // opening does not read the ids
  std::vector<uint32_t> got(2);
  file.Read(0, 2, got.data());
  EXPECT_EQ(got, (std::vector<uint32_t>{1, 2}));
  ExpectError([&] { file.Read(1, 2, got.data()); }, path, "token at position 2 (byte offset 4) is 300");
}

}  // namespace
}  // namespace hetermoe::io
