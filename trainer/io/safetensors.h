// Safetensors: read and write the Hugging Face tensor file format.
//
// Layout: u64 little-endian header size N, N bytes of JSON header mapping each
// tensor name to {dtype, shape, data_offsets: [begin, end)} (offsets relative
// to the end of the header) plus an optional "__metadata__" string map, then
// the raw little-endian data. F32, F16 and BF16 load (converted to float);
// the trainer writes F32.
//
// Parsing never trusts the file: header size, JSON, dtypes, shapes,
// overlapping or out-of-range offsets and byte counts are all checked, and
// every failure throws hetermoe::Error naming the file and the problem.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/file_bytes.h"

namespace hetermoe::io {

enum class DType { kF32, kF16, kBF16 };

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;

  int64_t NumElements() const;
};

// A safetensors file. Load maps a regular file into memory read-only, so
// only the pages of the tensors read are brought in: a rank that reads its
// own tensors of a whole-model file does not hold the rest, and a tensor's
// pages leave memory once it is copied out. Thread-compatible.
class SafetensorsFile {
 public:
  static SafetensorsFile Load(const std::string& path);
  // `source` names the bytes in error messages. Used by Load and the fuzzer.
  static SafetensorsFile Parse(std::string bytes, const std::string& source);

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& source() const { return source_; }
  // nullptr when absent.
  const TensorInfo* Find(std::string_view name) const;
  // The tensor's values as float (F16/BF16 converted). Throws if absent.
  std::vector<float> ReadFloat(std::string_view name) const;
  // Copies into `out`, checking that the tensor has exactly `shape`
  // (error names the tensor, the expected and the actual shape).
  void ReadInto(std::string_view name, const std::vector<int64_t>& shape, float* out) const;

  // Bytes of the data section the reads so far touched (tensor data only).
  uint64_t bytes_read() const { return bytes_read_; }

 private:
  static SafetensorsFile ParseView(FileView view, const std::string& source);
  std::string source_;
  FileView view_;  // the bytes: a file mapping, or a string (Parse)
  mutable uint64_t bytes_read_ = 0;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

struct TensorToWrite {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;  // NumElements(shape) floats
  // Instead of `data`: writes the tensor's floats [first, first + count)
  // into `out` when the writer reaches them (in order, in pieces of at most
  // kFillFloats), so neither the file nor a whole tensor need be in memory.
  std::function<void(int64_t first, int64_t count, float* out)> fill;
  static constexpr int64_t kFillFloats = int64_t{1} << 22;  // 16 MiB
  // On disk: F32, or BF16 (each float rounded to nearest, ties to even;
  // NaN stays NaN).
  DType dtype = DType::kF32;
};

// Rounds a float to bfloat16's bits (nearest, ties to even; NaN stays NaN).
uint16_t FloatToBFloat16(float f);

// Writes a safetensors file at `path` (plain write + fsync; atomicity
// is the caller's: checkpoints are written into a temporary directory that is
// renamed into place).
void WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace hetermoe::io
