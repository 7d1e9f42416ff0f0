// Single-file or sharded safetensors (see safetensors_set.h).
#include "trainer/io/safetensors_set.h"

#include <filesystem>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/file_bytes.h"

namespace hetermoe::io {
namespace fs = std::filesystem;

namespace {

constexpr const char* kIndex = "model.safetensors.index.json";
constexpr const char* kSingle = "model.safetensors";

}  // namespace

SafetensorsSet SafetensorsSet::Open(const std::string& path) {
  SafetensorsSet set;
  std::string file = path;
  if (fs::is_directory(path)) {
    if (fs::exists(fs::path(path) / kIndex)) {
      file = (fs::path(path) / kIndex).string();
    } else if (fs::exists(fs::path(path) / kSingle)) {
      file = (fs::path(path) / kSingle).string();
    } else {
      throw Error(path + ": a folder without " + kIndex + " or " + kSingle);
    }
  }
  set.source_ = file;
  const bool index = file.size() >= 5 && file.compare(file.size() - 5, 5, ".json") == 0;
  if (!index) {
    set.single_ = SafetensorsFile::Load(file);
    return set;
  }
  const nlohmann::json doc = nlohmann::json::parse(ReadFileBytes(file), nullptr, false);
  if (doc.is_discarded()) throw Error(file + ": not valid JSON");
  if (!doc.is_object() || !doc.contains("weight_map") || !doc["weight_map"].is_object())
    throw Error(file + ": no \"weight_map\" object (a Hugging Face safetensors index maps tensors to shards)");
  for (const auto& [tensor, shard] : doc["weight_map"].items()) {
    if (!shard.is_string()) throw Error(file + ": weight_map[\"" + tensor + "\"] is not a file name");
    const std::string name = shard.get<std::string>();
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
      throw Error(file + ": weight_map[\"" + tensor + "\"] names \"" + name + "\", not a file beside the index");
    set.shard_of_[tensor] = name;
  }
  set.dir_ = fs::path(file).parent_path().string();
  return set;
}

std::vector<std::string> SafetensorsSet::Names() const {
  std::vector<std::string> out;
  if (single_) {
    for (const TensorInfo& t : single_->tensors()) out.push_back(t.name);
  } else {
    for (const auto& [tensor, shard] : shard_of_) out.push_back(tensor);
  }
  return out;
}

bool SafetensorsSet::Has(const std::string& name) const {
  return single_ ? single_->Find(name) != nullptr : shard_of_.count(name) > 0;
}

void SafetensorsSet::ReadInto(const std::string& name, const std::vector<int64_t>& shape, float* out) {
  if (single_) {
    single_->ReadInto(name, shape, out);
    return;
  }
  const auto it = shard_of_.find(name);
  if (it == shard_of_.end()) throw Error(source_ + ": no tensor \"" + name + "\" in the weight_map");
  auto file = open_.find(it->second);
  if (file == open_.end()) {
    const std::string shard = (fs::path(dir_) / it->second).string();
    file = open_.emplace(it->second, SafetensorsFile::Load(shard)).first;
  }
  if (!file->second.Find(name))
    throw Error(file->second.source() + ": no tensor \"" + name + "\" (" + source_ + " says it is in this shard)");
  file->second.ReadInto(name, shape, out);
}

uint64_t SafetensorsSet::bytes_read() const {
  if (single_) return single_->bytes_read();
  uint64_t total = 0;
  for (const auto& [name, file] : open_) total += file.bytes_read();
  return total;
}

}  // namespace hetermoe::io
