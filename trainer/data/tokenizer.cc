#include "trainer/data/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <thread>
#include <unordered_map>

#include "common/error.h"
#include "common/file_bytes.h"

namespace hetermoe::data {

Tokenizer::Tokenizer(const std::string& path)
    : path_(path), processor_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  // Read it ourselves, so a missing file is the usual `cannot open` line.
  const std::string bytes = io::ReadFileBytes(path);
  if (const auto status = processor_->LoadFromSerializedProto(bytes); !status.ok())
    throw Error(path + ": not a SentencePiece model: " + status.ToString());
}

Tokenizer::~Tokenizer() = default;

std::vector<uint32_t> Tokenizer::Encode(const std::string& text) const {
  std::vector<int> ids;
  if (const auto status = processor_->Encode(text, &ids); !status.ok())
    throw Error(path_ + ": cannot encode: " + status.ToString());
  return {ids.begin(), ids.end()};
}

std::string Tokenizer::Decode(const std::vector<uint32_t>& ids) const {
  std::string text;
  if (const auto status = processor_->Decode(std::vector<int>(ids.begin(), ids.end()), &text); !status.ok())
    throw Error(path_ + ": cannot decode: " + status.ToString());
  return text;
}

int64_t Tokenizer::vocab_size() const { return processor_->GetPieceSize(); }
int64_t Tokenizer::eos_id() const { return processor_->eos_id(); }

void TrainTokenizer(const TokenizerTraining& t) {
  if (t.inputs.empty()) throw Error("train-tokenizer: no input files");
  std::string inputs;
  for (const std::string& input : t.inputs) {
    io::ReadFileBytes(input);  // a missing input is one line naming it, before training starts
    inputs += (inputs.empty() ? "" : ",") + input;
  }
  const int threads = t.threads > 0 ? t.threads : std::max(1u, std::thread::hardware_concurrency());
  const std::unordered_map<std::string, std::string> options = {
      {"input", inputs},
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(t.vocab_size)},
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
  std::string model;
  if (const auto status = sentencepiece::SentencePieceTrainer::Train(options, nullptr, &model); !status.ok())
    throw Error(t.output + ": cannot train the tokenizer on " + inputs + ": " + status.ToString());
  io::FileWriter out(t.output);
  out.Write(model.data(), model.size());
  out.Finish();
}

}  // namespace hetermoe::data
