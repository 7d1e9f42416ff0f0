// A SentencePiece tokenizer (the `tokenizer.model` format Mixtral and Llama
// ship), through Debian's libsentencepiece in a plugin loaded on first use
// (sentencepiece_model.h): load one, encode and decode, and train a small one
// on a corpus. Errors are hetermoe::Error naming the file.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "trainer/data/sentencepiece_model.h"

namespace hetermoe::data {

class Tokenizer {
 public:
  // Throws `<path>: not a SentencePiece model: ...` for anything else.
  explicit Tokenizer(const std::string& path);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  std::vector<uint32_t> Encode(const std::string& text) const;
  std::string Decode(const std::vector<uint32_t>& ids) const;
  int64_t vocab_size() const;
  // The end-of-sequence id, or -1 when the model has none.
  int64_t eos_id() const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::unique_ptr<SentencePieceModel> model_;
};

struct TokenizerTraining {
  std::vector<std::string> inputs;  // text files, one sentence per line
  std::string output;               // the .model file to write
  int64_t vocab_size = 1024;
  int threads = 0;  // 0 = the CPUs this process may use
};

// Trains a byte-fallback BPE model whose decode(encode(text)) == text for
// any UTF-8 text: identity normalisation, no dummy prefix, whitespace kept,
// every byte reachable through its <0xNN> piece; ids 0-2 are <unk>, <s>,
// </s>. A corpus too small for `vocab_size` pieces gives fewer. Writes
// `output` (fsync'ed).
void TrainTokenizer(const TokenizerTraining& training);

}  // namespace hetermoe::data
