#include "trainer/data/prepare.h"

#include <algorithm>
#include <memory>
#include <string_view>

#include "common/error.h"
#include "common/file_bytes.h"
#include "trainer/data/tokenizer.h"
#include "trainer/io/token_file.h"

namespace hetermoe::data {

DocumentSplit ParseDocumentSplit(const std::string& name) {
  if (name == "file") return DocumentSplit::kFile;
  if (name == "blank-line") return DocumentSplit::kBlankLine;
  throw Error("--split " + name + ": must be file or blank-line");
}

std::vector<std::string_view> SplitDocuments(std::string_view text, DocumentSplit split) {
  if (split == DocumentSplit::kFile) return text.empty() ? std::vector<std::string_view>{} : std::vector{text};
  // A block's lines are contiguous in the text: a document is the span from
  // its first line's start to its last line's end.
  std::vector<std::string_view> documents;
  size_t block = std::string_view::npos;  // where the current block starts
  for (size_t begin = 0; begin < text.size();) {
    size_t end = text.find('\n', begin);
    end = end == std::string_view::npos ? text.size() : end + 1;  // the line with its newline
    const std::string_view line = text.substr(begin, end - begin);
    if (line.find_first_not_of(" \t\r\n") == std::string_view::npos) {
      if (block != std::string_view::npos) documents.push_back(text.substr(block, begin - block));
      block = std::string_view::npos;
    } else if (block == std::string_view::npos) {
      block = begin;
    }
    begin = end;
  }
  if (block != std::string_view::npos) documents.push_back(text.substr(block));
  return documents;
}

PreparedData PrepareTokens(const DataPreparation& p) {
  if (p.inputs.empty()) throw Error("prepare-data: no input files");
  std::unique_ptr<Tokenizer> tokenizer;
  PreparedData prepared;
  if (!p.tokenizer.empty()) {
    tokenizer = std::make_unique<Tokenizer>(p.tokenizer);
    if (tokenizer->eos_id() < 0)
      throw Error(p.tokenizer + ": the tokenizer has no end-of-sequence id to put between documents");
    prepared.vocab_size = tokenizer->vocab_size();
  }
  // Streamed: the inputs are mapped, bytes go out in pieces, and a
  // tokenizer's ids one document at a time.
  io::TokenFileWriter out(p.output, prepared.vocab_size > 65536 ? 4 : 2);
  std::vector<uint32_t> ids;
  for (const std::string& input : p.inputs) {
    const io::FileView file = io::MapFile(input);
    const std::string_view text = file.bytes;
    if (!tokenizer) {
      constexpr size_t kPiece = size_t{1} << 20;
      for (size_t at = 0; at < text.size(); at += kPiece) {
        ids.resize(std::min(kPiece, text.size() - at));
        for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<unsigned char>(text[at + i]);
        out.Append(ids.data(), ids.size());
      }
      prepared.documents += text.empty() ? 0 : 1;
      continue;
    }
    for (const std::string_view document : SplitDocuments(text, p.split)) {
      if (document.size() > kMaxDocumentBytes)
        throw Error(input + ": a document of " + std::to_string(document.size()) + " bytes, more than the " +
                    std::to_string(kMaxDocumentBytes >> 20) +
                    " MiB SentencePiece can encode in bounded memory (about 170 bytes of memory per byte of a "
                    "document); split it with --split blank-line or into several files");
      ids = tokenizer->Encode(std::string(document));
      ids.push_back(static_cast<uint32_t>(tokenizer->eos_id()));
      out.Append(ids.data(), ids.size());
      ++prepared.documents;
    }
  }
  if (out.count() == 0) throw Error(p.inputs.front() + ": empty text, no tokens to prepare");
  out.Finish();
  prepared.tokens = out.count();
  return prepared;
}

}  // namespace hetermoe::data
