// libhetermoe_tokenizer.so: SentencePiece (Debian's libsentencepiece) behind
// the entry points of sentencepiece_model.h, loaded by tokenizer.cc.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <thread>
#include <unordered_map>

#include "trainer/data/sentencepiece_model.h"
#include "trainer/data/tokenizer.h"

namespace {

using hetermoe::data::SentencePieceModel;
using hetermoe::data::TokenizerTraining;

void Copy(const std::string& message, char* error, size_t n) {
  if (error == nullptr || n == 0) return;
  std::strncpy(error, message.c_str(), n - 1);
  error[n - 1] = '\0';
}

class Model final : public SentencePieceModel {
 public:
  sentencepiece::SentencePieceProcessor processor;

  bool Encode(const std::string& text, std::vector<uint32_t>* ids, std::string* error) const override {
    std::vector<int> out;
    if (const auto status = processor.Encode(text, &out); !status.ok()) {
      *error = status.ToString();
      return false;
    }
    ids->assign(out.begin(), out.end());
    return true;
  }
  bool Decode(const std::vector<uint32_t>& ids, std::string* text, std::string* error) const override {
    if (const auto status = processor.Decode(std::vector<int>(ids.begin(), ids.end()), text); !status.ok()) {
      *error = status.ToString();
      return false;
    }
    return true;
  }
  int64_t vocab_size() const override { return processor.GetPieceSize(); }
  int64_t eos_id() const override { return processor.eos_id(); }
};

}  // namespace

extern "C" {

SentencePieceModel* HetermoeLoadTokenizer(const char* bytes, size_t size, char* error, size_t n) {
  auto model = std::make_unique<Model>();
  if (const auto status = model->processor.LoadFromSerializedProto(std::string_view(bytes, size)); !status.ok()) {
    Copy(status.ToString(), error, n);
    return nullptr;
  }
  return model.release();
}

int HetermoeTrainTokenizer(const TokenizerTraining* t, std::string* model, char* error, size_t n) {
  std::string inputs;
  for (const std::string& input : t->inputs) inputs += (inputs.empty() ? "" : ",") + input;
  const int threads = t->threads > 0 ? t->threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const std::unordered_map<std::string, std::string> options = {
      {"input", inputs},
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(t->vocab_size)},
      {"byte_fallback", "true"},
      {"character_coverage", "1.0"},
      {"normalization_rule_name", "identity"},
      {"add_dummy_prefix", "false"},
      {"remove_extra_whitespaces", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"split_digits", "true"},
      {"hard_vocab_limit", "false"},  // a small corpus may give fewer pieces than asked
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"num_threads", std::to_string(threads)},
      {"minloglevel", "1"},
  };
  if (const auto status = sentencepiece::SentencePieceTrainer::Train(options, nullptr, model); !status.ok()) {
    Copy(status.ToString(), error, n);
    return -1;
  }
  return 0;
}

}  // extern "C"
