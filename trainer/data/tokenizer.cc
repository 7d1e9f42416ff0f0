#include "trainer/data/tokenizer.h"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <filesystem>

#include "common/error.h"
#include "common/file_bytes.h"

namespace hetermoe::data {
namespace {

constexpr const char* kPluginName = "libhetermoe_tokenizer.so";

// The SentencePiece plugin (sentencepiece_model.h says why it is one): at
// $HETERMOE_TOKENIZER_PLUGIN, beside the executable, in ../lib, or where the
// build put it. Loaded once, on first use.
void* Plugin() {
  static void* const handle = [] {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("HETERMOE_TOKENIZER_PLUGIN"); env && *env) candidates.push_back(env);
    char self[PATH_MAX] = {0};
    if (::readlink("/proc/self/exe", self, sizeof self - 1) > 0) {
      const auto dir = std::filesystem::path(self).parent_path();
      candidates.push_back((dir / kPluginName).string());
      candidates.push_back((dir / ".." / "lib" / kPluginName).string());
    }
#if defined(HETERMOE_TOKENIZER_PLUGIN_PATH)
    candidates.push_back(HETERMOE_TOKENIZER_PLUGIN_PATH);
#endif
    std::string why;
    for (const auto& c : candidates) {
      if (!std::filesystem::exists(c)) continue;
      if (void* h = ::dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL)) return h;
      why = c + ": " + ::dlerror();
    }
    throw Error(std::string("SentencePiece tokenizers need ") + kPluginName + ", which " +
                (why.empty() ? "was not found beside the program, in ../lib or at $HETERMOE_TOKENIZER_PLUGIN"
                             : "did not load: " + why));
    return static_cast<void*>(nullptr);
  }();
  return handle;
}

template <typename Fn>
Fn Entry(const char* name) {
  auto fn = reinterpret_cast<Fn>(::dlsym(Plugin(), name));
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
    io::ReadFileBytes(input);  // a missing input is one line naming it, before training starts
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
