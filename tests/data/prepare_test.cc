// prepare-data's pure part (documents from text) and its files: byte-level
// tokens as before, and with a tokenizer one document after another, each
// followed by the end-of-sequence id.
#include "trainer/data/prepare.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/error.h"
#include "tests/support/test_util.h"
#include "trainer/data/tokenizer.h"
#include "trainer/io/token_file.h"

namespace hetermoe::data {
namespace {

using io::testing::ExpectError;
using io::testing::ScratchDir;
using Docs = std::vector<std::string_view>;

TEST(SplitDocumentsTest, AWholeFileOrBlocksBetweenBlankLines) {
  EXPECT_EQ(SplitDocuments("a\n\nb\n", DocumentSplit::kFile), Docs{"a\n\nb\n"});
  EXPECT_EQ(SplitDocuments("", DocumentSplit::kFile), Docs{});
  EXPECT_EQ(SplitDocuments("a\nb\n\nc\n", DocumentSplit::kBlankLine), (Docs{"a\nb\n", "c\n"}));
  // Several blank lines, blank lines holding spaces, tabs or \r, and blank
  // lines at either end separate the same way; the last line may lack \n.
  EXPECT_EQ(SplitDocuments("\n\na  b\n \t\r\n\n c\nd", DocumentSplit::kBlankLine), (Docs{"a  b\n", " c\nd"}));
  EXPECT_EQ(SplitDocuments("\n \n", DocumentSplit::kBlankLine), Docs{});
  EXPECT_EQ(ParseDocumentSplit("blank-line"), DocumentSplit::kBlankLine);
  EXPECT_THROW(ParseDocumentSplit("paragraph"), Error);
}

TEST(PrepareTokensTest, BytesOfEveryFileInOrder) {
  ScratchDir dir;
  const std::string a = dir.WriteFile("a.txt", std::string("hi!\n\xff", 5));
  const std::string b = dir.WriteFile("b.txt", "ok");
  const std::string out = dir.Path("out.bin");
  const PreparedData prepared = PrepareTokens({{a, b}, out, "", DocumentSplit::kFile});
  EXPECT_EQ(prepared.tokens, 7);
  EXPECT_EQ(prepared.documents, 2);
  EXPECT_EQ(prepared.vocab_size, 256);
  EXPECT_EQ(io::LoadTokenFile(out, 256), (std::vector<uint32_t>{'h', 'i', '!', '\n', 255, 'o', 'k'}));
  const std::string empty = dir.WriteFile("empty.txt", "");
  ExpectError([&] { PrepareTokens({{empty}, out, "", DocumentSplit::kFile}); }, empty, "empty text");
  const std::string missing = dir.Path("missing.txt");
  ExpectError([&] { PrepareTokens({{missing}, out, "", DocumentSplit::kFile}); }, missing, "cannot open");
}

TEST(PrepareTokensTest, EachDocumentEndsWithTheEndOfSequenceId) {
  ScratchDir dir;
  const std::string corpus = dir.WriteFile("corpus.txt", "the cat sat on the mat\nthe dog sat on the log\n");
  const std::string model = dir.Path("tokenizer.model");
  TrainTokenizer({{corpus}, model, 300, 1});
  const Tokenizer tokenizer(model);
  const std::string text = dir.WriteFile("docs.txt", "the cat\n\n\nthe dog sat\non the mat\n\n");
  const std::string other = dir.WriteFile("other.txt", "a log\n");
  const std::string out = dir.Path("out.bin");
  const PreparedData prepared = PrepareTokens({{text, other}, out, model, DocumentSplit::kBlankLine});
  std::vector<uint32_t> expected;
  for (const std::string doc : {"the cat\n", "the dog sat\non the mat\n", "a log\n"}) {
    const auto ids = tokenizer.Encode(doc);
    expected.insert(expected.end(), ids.begin(), ids.end());
    expected.push_back(static_cast<uint32_t>(tokenizer.eos_id()));
  }
  EXPECT_EQ(prepared.documents, 3);
  EXPECT_EQ(prepared.vocab_size, tokenizer.vocab_size());
  EXPECT_LE(tokenizer.vocab_size(), 300);
  EXPECT_GT(tokenizer.vocab_size(), 256);
  EXPECT_EQ(prepared.tokens, static_cast<int64_t>(expected.size()));
  EXPECT_EQ(io::LoadTokenFile(out, tokenizer.vocab_size()), expected);
  EXPECT_EQ(tokenizer.eos_id(), 2);
  ExpectError([&] { io::LoadTokenFile(out, 256); }, out, "vocab");  // ids above 255: the model must be wider

  // A document too large to encode in bounded memory is refused by name
  // before the tokenizer sees it, and the output keeps its previous content.
  const std::string huge = dir.WriteFile("huge.txt", std::string(kMaxDocumentBytes + 1, 'a'));
  const std::string before = ScratchDir::ReadFile(out);
  ExpectError([&] { PrepareTokens({{text, huge}, out, model, DocumentSplit::kFile}); }, huge,
              "--split blank-line");
  EXPECT_EQ(ScratchDir::ReadFile(out), before) << "a failed preparation leaves the old file as it was";

  const std::string garbage = dir.WriteFile("garbage.model", "not a model");
  ExpectError([&] { PrepareTokens({{text}, out, garbage, DocumentSplit::kFile}); }, garbage,
              "not a SentencePiece model");
  const std::string missing = dir.Path("missing.model");
  ExpectError([&] { PrepareTokens({{text}, out, missing, DocumentSplit::kFile}); }, missing, "cannot open");
}

}  // namespace
}  // namespace hetermoe::data
