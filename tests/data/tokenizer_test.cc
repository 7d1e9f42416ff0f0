// The SentencePiece tokenizer, trained here on the licences every Debian
// system ships (/usr/share/common-licenses, ~250 KB of English): the text
// comes back exactly from its ids, and the ids are the ones SentencePiece's
// own command-line encoder (spm_encode) gives for the same model.
#include "trainer/data/tokenizer.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/file_bytes.h"
#include "tests/support/test_util.h"

namespace hetermoe::data {
namespace {

const char* const kLicences[] = {"GPL-3", "GPL-2", "LGPL-2.1", "LGPL-3", "Apache-2.0", "Artistic", "MPL-2.0",
                                 "GFDL-1.3"};

std::string Licence(const std::string& name) { return io::ReadFileBytes("/usr/share/common-licenses/" + name); }

class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = ::testing::TempDir() + "/hetermoe_tokenizer_" + std::to_string(getpid()) + ".model";
    std::vector<std::string> inputs;
    for (const char* name : kLicences) inputs.push_back(std::string("/usr/share/common-licenses/") + name);
    TrainTokenizer({inputs, model_, 1024, 0});
  }
  static void TearDownTestSuite() { std::remove(model_.c_str()); }
  static std::string model_;
};
std::string TokenizerTest::model_;

TEST_F(TokenizerTest, DecodingTheIdsGivesTheTextBackExactly) {
  const Tokenizer tokenizer(model_);
  EXPECT_EQ(tokenizer.vocab_size(), 1024);
  int64_t bytes = 0, ids = 0;
  for (const char* name : kLicences) {
    const std::string text = Licence(name);
    const std::vector<uint32_t> encoded = tokenizer.Encode(text);
    ASSERT_EQ(tokenizer.Decode(encoded), text) << name;
    bytes += static_cast<int64_t>(text.size());
    ids += static_cast<int64_t>(encoded.size());
  }
  std::printf("the licences: %lld bytes, %lld tokens (%.2f bytes per token)\n", static_cast<long long>(bytes),
              static_cast<long long>(ids), static_cast<double>(bytes) / static_cast<double>(ids));
  EXPECT_GT(bytes, 2 * ids) << "a 1024-piece BPE should at least halve the count against bytes";
  // Text the corpus never showed: other scripts, control characters, runs of
  // whitespace; byte pieces carry what the vocabulary lacks.
  for (const std::string text : {std::string("naïve café — 日本語 ✓\t\t  x\r\n\n  "), std::string("\x01\x7f", 2),
                                 std::string(" leading and trailing ")})
    EXPECT_EQ(tokenizer.Decode(tokenizer.Encode(text)), text);
}

// spm_encode reads one sentence per line (the newline is not part of it)
// and prints each line's ids; ours must be the same, line by line.
TEST_F(TokenizerTest, IdsMatchSentencePiecesCommandLineEncoder) {
  if (std::string(HETERMOE_SPM_ENCODE).empty()) GTEST_SKIP() << "spm_encode not installed (package sentencepiece)";
  const Tokenizer tokenizer(model_);
  for (const char* name : {"GPL-3", "Apache-2.0"}) {
    const std::string path = std::string("/usr/share/common-licenses/") + name;
    const std::string command =
        std::string(HETERMOE_SPM_ENCODE) + " --model=" + model_ + " --output_format=id < " + path;
    FILE* pipe = popen(command.c_str(), "r");
    ASSERT_NE(pipe, nullptr);
    std::string output;
    char buffer[65536];
    for (size_t n; (n = fread(buffer, 1, sizeof buffer, pipe)) > 0;) output.append(buffer, n);
    ASSERT_EQ(pclose(pipe), 0) << command;
    std::istringstream text(Licence(name)), theirs(output);
    std::string line, their_line;
    int64_t lines = 0, tokens = 0;
    while (std::getline(text, line)) {
      ASSERT_TRUE(std::getline(theirs, their_line)) << name << ": spm_encode printed fewer lines";
      std::vector<uint32_t> expected;
      std::istringstream ids(their_line);
      for (uint32_t id; ids >> id;) expected.push_back(id);
      ASSERT_EQ(tokenizer.Encode(line), expected) << name << " line " << lines + 1 << ": " << line;
      ++lines;
      tokens += static_cast<int64_t>(expected.size());
    }
    std::printf("%s: %lld lines, %lld tokens, the same ids as spm_encode\n", name, static_cast<long long>(lines),
                static_cast<long long>(tokens));
    EXPECT_GT(tokens, 1000);
  }
}

TEST(TokenizerErrorsTest, BadModelsAndInputsNameTheFile) {
  io::testing::ScratchDir dir;
  const std::string truncated = dir.WriteFile("truncated.model", std::string("\x0a\x05", 2));
  io::testing::ExpectError([&] { Tokenizer t(truncated); }, truncated, "not a SentencePiece model");
  const std::string missing = dir.Path("nope.txt");
  io::testing::ExpectError([&] { TrainTokenizer({{missing}, dir.Path("t.model"), 1024, 1}); }, missing, "cannot open");
}

}  // namespace
}  // namespace hetermoe::data
