#include "trainer/data/tokenizer.h"

#include <dlfcn.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "common/error.h"
#include "common/file_bytes.h"
#include "common/plugin.h"

namespace hetermoe::data {
namespace {

constexpr const char* kPluginName = "libhetermoe_tokenizer.so";

// The SentencePiece plugin (sentencepiece_model.h says why it is one),
// loaded on first use.
void* PluginHandle() {
#if defined(HETERMOE_TOKENIZER_PLUGIN_PATH)
  static const Plugin plugin = LoadPlugin(kPluginName, "HETERMOE_TOKENIZER_PLUGIN", HETERMOE_TOKENIZER_PLUGIN_PATH);
#else
  static const Plugin plugin = LoadPlugin(kPluginName, "HETERMOE_TOKENIZER_PLUGIN", nullptr);
#endif
  if (!plugin.handle) throw Error("SentencePiece tokenizers need " + plugin.why);
  return plugin.handle;
}

template <typename Fn>
Fn Entry(const char* name) {
  auto fn = reinterpret_cast<Fn>(::dlsym(PluginHandle(), name));
  if (fn == nullptr) throw Error(std::string(kPluginName) + ": no entry point " + name);
  return fn;
}

}  // namespace

Tokenizer::Tokenizer(const std::string& path) : path_(path) {
  // Read it here, so a missing file is the usual `cannot open` line.
  const std::string bytes = io::ReadFileBytes(path);
  char error[512] = {0};
  model_.reset(Entry<LoadTokenizerFn>(kLoadTokenizer)(bytes.data(), bytes.size(), error, sizeof error));
  if (!model_) throw Error(path + ": not a SentencePiece model: " + error);
}

Tokenizer::~Tokenizer() = default;

std::vector<uint32_t> Tokenizer::Encode(const std::string& text) const {
  std::vector<uint32_t> ids;
  std::string error;
  if (!model_->Encode(text, &ids, &error)) throw Error(path_ + ": cannot encode: " + error);
  return ids;
}

std::string Tokenizer::Decode(const std::vector<uint32_t>& ids) const {
  std::string text, error;
  if (!model_->Decode(ids, &text, &error)) throw Error(path_ + ": cannot decode: " + error);
  return text;
}

int64_t Tokenizer::vocab_size() const { return model_->vocab_size(); }
int64_t Tokenizer::eos_id() const { return model_->eos_id(); }

void TrainTokenizer(const TokenizerTraining& t) {
  if (t.inputs.empty()) throw Error("train-tokenizer: no input files");
  std::string inputs;
  for (const std::string& input : t.inputs) {
    // A missing input is one line naming it, before training starts (without
    // reading a large corpus twice).
    if (!std::ifstream(input)) throw Error(input + ": cannot open: " + std::strerror(errno));
    inputs += (inputs.empty() ? "" : ", ") + input;
  }
  std::string model;
  char error[512] = {0};
  if (Entry<TrainTokenizerFn>(kTrainTokenizer)(&t, &model, error, sizeof error) != 0)
    throw Error(t.output + ": cannot train the tokenizer on " + inputs + ": " + error);
  io::FileWriter out(t.output);
  out.Write(model.data(), model.size());
  out.Finish();
}

}  // namespace hetermoe::data
