#include "trainer/data/prepare.h"

#include <memory>

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

std::vector<std::string> SplitDocuments(const std::string& text, DocumentSplit split) {
  if (split == DocumentSplit::kFile) return text.empty() ? std::vector<std::string>{} : std::vector{text};
  std::vector<std::string> documents;
  std::string current;
  for (size_t begin = 0; begin < text.size();) {
    size_t end = text.find('\n', begin);
    end = end == std::string::npos ? text.size() : end + 1;  // the line with its newline
    const std::string_view line(text.data() + begin, end - begin);
    if (line.find_first_not_of(" \t\r\n") == std::string_view::npos) {
      if (!current.empty()) documents.push_back(std::move(current));
      current.clear();
    } else {
      current.append(line);
    }
    begin = end;
  }
  if (!current.empty()) documents.push_back(std::move(current));
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
  std::vector<uint32_t> tokens;
  for (const std::string& input : p.inputs) {
    const std::string text = io::ReadFileBytes(input);
    if (!tokenizer) {
      for (unsigned char byte : text) tokens.push_back(byte);
      prepared.documents += text.empty() ? 0 : 1;
      continue;
    }
    for (const std::string& document : SplitDocuments(text, p.split)) {
      const std::vector<uint32_t> ids = tokenizer->Encode(document);
      tokens.insert(tokens.end(), ids.begin(), ids.end());
      tokens.push_back(static_cast<uint32_t>(tokenizer->eos_id()));
      ++prepared.documents;
    }
  }
  if (tokens.empty()) throw Error(p.inputs.front() + ": empty text, no tokens to prepare");
  io::WriteTokenFile(p.output, tokens);
  prepared.tokens = static_cast<int64_t>(tokens.size());
  return prepared;
}

}  // namespace hetermoe::data
