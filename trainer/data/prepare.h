// `hetermoe-trainer prepare-data`: text files in, one token file out
// (trainer/io/token_file.h). Byte-level (every byte a token, vocabulary 256,
// the files' bytes back to back) or, with a SentencePiece tokenizer, one
// document after another, each followed by the tokenizer's end-of-sequence
// id, so that a sequence that spans two documents sees where one ends.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace hetermoe::data {

// What one document is: a whole input file, or a block of lines between
// blank lines (a line that is empty or holds only spaces, tabs or \r).
enum class DocumentSplit { kFile, kBlankLine };
DocumentSplit ParseDocumentSplit(const std::string& name);  // "file" | "blank-line"

// Pure: the documents of one file's text, as views into it. A blank-line
// block keeps its lines with their newlines; the blank lines between blocks
// are dropped (the end-of-sequence id stands for them). Empty documents are
// left out.
std::vector<std::string_view> SplitDocuments(std::string_view text, DocumentSplit split);

// The largest document prepare-data hands to the tokenizer: SentencePiece
// holds about 170 bytes per byte of the text it encodes (measured: 660 MiB
// for a 4 MiB document), so a whole large file as one document would exhaust
// the machine's memory.
inline constexpr size_t kMaxDocumentBytes = size_t{16} << 20;

struct DataPreparation {
  std::vector<std::string> inputs;  // text files, in this order
  std::string output;               // the token file
  std::string tokenizer;            // a SentencePiece .model; empty: bytes
  DocumentSplit split = DocumentSplit::kFile;
};
struct PreparedData {
  int64_t tokens = 0, documents = 0;
  int64_t vocab_size = 256;  // the model's vocab_size must be at least this
};
PreparedData PrepareTokens(const DataPreparation& preparation);

}  // namespace hetermoe::data
