// A set of safetensors files that together hold a model, as Hugging Face
// publishes them: one `model.safetensors`, or shards listed by
// `model.safetensors.index.json` ({"weight_map": {tensor: shard file}}).
//
// Open takes a .safetensors file, an index file, or a folder holding either
// (the index wins). Shards are opened (memory-mapped) the first time one of
// their tensors is read, so a rank that needs a few tensors touches only
// their shards and pages. Errors name the file: a missing or unreadable
// shard, an index that is not JSON or has no weight_map, an index naming a
// tensor its shard does not hold.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "trainer/io/safetensors.h"

namespace hetermoe::io {

class SafetensorsSet {
 public:
  static SafetensorsSet Open(const std::string& path);

  // Every tensor name the set holds, sorted.
  std::vector<std::string> Names() const;
  bool Has(const std::string& name) const;
  // Copies tensor `name` into `out`, checking its shape (SafetensorsFile::ReadInto).
  void ReadInto(const std::string& name, const std::vector<int64_t>& shape, float* out);
  // Tensor data read so far, over all shards.
  uint64_t bytes_read() const;
  // What errors name: the file, or the index.
  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::string dir_;                                   // where shard names are resolved
  std::map<std::string, std::string> shard_of_;       // tensor -> shard file name (index only)
  std::map<std::string, SafetensorsFile> open_;       // shard file name -> file, opened on use
  std::optional<SafetensorsFile> single_;             // a single file
};

}  // namespace hetermoe::io
