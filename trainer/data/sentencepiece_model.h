// The interface between the tokenizer (tokenizer.cc) and its plugin
// (sentencepiece_plugin.cc), which alone links libsentencepiece.
//
// Why a plugin: every library linked at start-up adds its thread-local
// storage to the bottom of every thread's stack, and civetweb (the metrics
// endpoint's HTTP server) runs its workers on ~100 KB stacks that OpenBLAS's
// 60 KB of TLS already crowds. libsentencepiece's 5 KB more made a scrape
// overflow a worker's stack. A dlopen'ed module's TLS is allocated apart,
// and only by the threads that use it (as for the CUDA plugin).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace hetermoe::data {

struct TokenizerTraining;

// A loaded SentencePiece model. Errors come back as false + message: no
// exception crosses the plugin boundary.
class SentencePieceModel {
 public:
  virtual ~SentencePieceModel() = default;
  virtual bool Encode(const std::string& text, std::vector<uint32_t>* ids, std::string* error) const = 0;
  virtual bool Decode(const std::vector<uint32_t>& ids, std::string* text, std::string* error) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t eos_id() const = 0;
};

// The plugin's entry points (extern "C"), by name.
// A model from a serialized ModelProto; nullptr + `error` (size n) if it is not one.
using LoadTokenizerFn = SentencePieceModel* (*)(const char* bytes, size_t size, char* error, size_t n);
inline constexpr const char* kLoadTokenizer = "HetermoeLoadTokenizer";
// Trains a model into *model (serialized); 0, or -1 + `error`.
using TrainTokenizerFn = int (*)(const TokenizerTraining* training, std::string* model, char* error, size_t n);
inline constexpr const char* kTrainTokenizer = "HetermoeTrainTokenizer";

}  // namespace hetermoe::data
