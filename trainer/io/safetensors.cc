// Safetensors reading (validating every field of an untrusted header) and
// F32 writing (see safetensors.h for the format).
//
// Reading maps the file (MapFile) and converts tensors on demand. The checks
// follow Hugging Face's safetensors loader except where it is stricter than
// the trainer needs: gaps between tensors and unused bytes after the last
// one are accepted (overlaps are not).
#include "trainer/io/safetensors.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/file_bytes.h"

namespace hetermoe::io {
namespace {

// The format is little-endian and so are the hosts the trainer runs on;
// supporting big-endian would mean byte-swapping every element.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

using nlohmann::json;

constexpr uint64_t kHeaderSizeBytes = 8;

// A tensor name (or any header string) quoted for an error message; dump()
// escapes control characters so that the message stays on one line.
std::string Quote(const std::string& s) {
  return json(s).dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Throws hetermoe::Error prefixed with the file's name. A type rather than a
// lambda so that it can be [[noreturn]].
struct Fail {
  const std::string& source;
  [[noreturn]] void operator()(const std::string& problem) const { throw Error(source + ": " + problem); }
};

uint64_t DTypeSize(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }

// Exact IEEE half -> single: every half value (subnormals, infinities, NaN
// payloads) is representable as a float, so no rounding happens.
float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h >> 15) << 31;
  const uint32_t exponent = (h >> 10) & 0x1f;
  const uint32_t mantissa = h & 0x3ff;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf, or NaN keeping its payload
  } else if (exponent != 0) {
    bits = sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13);  // normal: rebias
  } else {
    // Zero or subnormal: mantissa * 2^-24, exact in float (a 10-bit integer
    // times a power of two).
    float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  return std::bit_cast<float>(bits);
}

// bfloat16 is the top half of a float32.
float BFloat16ToFloat(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

// Validates one header entry and returns it.
TensorInfo ParseTensorEntry(const std::string& name, const json& entry, uint64_t data_size,
                            const Fail& fail) {
  const std::string where = "tensor " + Quote(name) + ": ";
  if (!entry.is_object()) fail(where + "entry is not a JSON object but " + entry.type_name());
  TensorInfo t;
  t.name = name;

  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end()) fail(where + "missing \"dtype\"");
  if (!dtype_it->is_string()) fail(where + "\"dtype\" is not a string but " + dtype_it->type_name());
  const std::string& dtype = dtype_it->get_ref<const std::string&>();
  if (dtype == "F32") {
    t.dtype = DType::kF32;
  } else if (dtype == "F16") {
    t.dtype = DType::kF16;
  } else if (dtype == "BF16") {
    t.dtype = DType::kBF16;
  } else {
    fail(where + "dtype " + Quote(dtype.substr(0, 32)) + " is not supported (F32, F16 and BF16 load)");
  }

  // Non-negative int64 from a JSON number; nlohmann parses non-negative
  // integers as uint64 and negative ones as int64.
  auto non_negative = [&](const json& v, const std::string& what) -> uint64_t {
    if (v.is_number_unsigned()) return v.get<uint64_t>();
    if (v.is_number_integer()) fail(where + what + " " + v.dump() + " is negative");
    fail(where + what + " is not an integer but " + (v.is_number() ? v.dump() : v.type_name()));
  };

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end()) fail(where + "missing \"shape\"");
  if (!shape_it->is_array()) fail(where + "\"shape\" is not an array but " + shape_it->type_name());
  uint64_t elements = 1;
  for (const json& dim : *shape_it) {
    uint64_t n = non_negative(dim, "shape dimension");
    if (n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        __builtin_mul_overflow(elements, n, &elements) ||
        elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail(where + "shape overflows 64-bit element counts");
    }
    t.shape.push_back(static_cast<int64_t>(n));
  }
  uint64_t byte_count;
  if (__builtin_mul_overflow(elements, DTypeSize(t.dtype), &byte_count)) {
    fail(where + "shape " + ShapeString(t.shape) + " overflows 64-bit byte counts");
  }

  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end()) fail(where + "missing \"data_offsets\"");
  if (!offsets_it->is_array() || offsets_it->size() != 2) {
    fail(where + "\"data_offsets\" is not an array of two offsets");
  }
  t.begin = non_negative((*offsets_it)[0], "data_offsets begin");
  t.end = non_negative((*offsets_it)[1], "data_offsets end");
  const std::string range = "[" + std::to_string(t.begin) + ", " + std::to_string(t.end) + ")";
  if (t.begin > t.end) fail(where + "data_offsets " + range + " end before they begin");
  if (t.end > data_size) {
    fail(where + "data_offsets " + range + " run past the data section of " +
         std::to_string(data_size) + " bytes (file truncated?)");
  }
  if (t.end - t.begin != byte_count) {
    fail(where + "data_offsets " + range + " hold " + std::to_string(t.end - t.begin) +
         " bytes but shape " + ShapeString(t.shape) + " of " + dtype + " needs " +
         std::to_string(byte_count));
  }
  return t;
}

}  // namespace

int64_t TensorInfo::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // validated not to overflow when parsed
  return n;
}

SafetensorsFile SafetensorsFile::Load(const std::string& path) { return ParseView(MapFile(path), path); }

SafetensorsFile SafetensorsFile::Parse(std::string bytes, const std::string& source) {
  auto owner = std::make_shared<const std::string>(std::move(bytes));
  const std::string_view view(*owner);
  return ParseView({std::move(owner), view, false}, source);
}

SafetensorsFile SafetensorsFile::ParseView(FileView view, const std::string& source) {
  const std::string_view bytes = view.bytes;
  const Fail fail{source};
  SafetensorsFile file;
  file.source_ = source;

  if (bytes.size() < kHeaderSizeBytes) {
    fail("file of " + std::to_string(bytes.size()) + " bytes is too short for the 8-byte header size");
  }
  uint64_t header_size;
  std::memcpy(&header_size, bytes.data(), sizeof header_size);  // little-endian host
  const uint64_t available = bytes.size() - kHeaderSizeBytes;
  if (header_size > available) {
    fail("header size " + std::to_string(header_size) + " exceeds the " + std::to_string(available) +
         " bytes after it (file truncated or not safetensors)");
  }
  const uint64_t data_size = available - header_size;

  json header;
  try {
    const char* begin = bytes.data() + kHeaderSizeBytes;
    header = json::parse(begin, begin + header_size);
  } catch (const json::exception& e) {
    // parse_error, and out_of_range for numbers beyond double (1e400).
    // nlohmann escapes control characters in what(), so this stays one line.
    fail(std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) fail(std::string("header is not a JSON object but ") + header.type_name());

  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (entry.is_null()) continue;
      if (!entry.is_object()) fail("\"__metadata__\" is not a JSON object but " + std::string(entry.type_name()));
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          fail("\"__metadata__\" value of " + Quote(key) + " is not a string but " + value.type_name());
        }
        file.metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    file.tensors_.push_back(ParseTensorEntry(name, entry, data_size, fail));
  }
  // tensors_ is sorted by name (nlohmann objects iterate in key order);
  // Find relies on that.

  // No two tensors may share bytes: in offset order, each must start at or
  // after the previous end. Sorting by (begin, end) puts an empty tensor
  // before a non-empty one at the same offset, which is not an overlap.
  std::vector<const TensorInfo*> by_offset;
  by_offset.reserve(file.tensors_.size());
  for (const TensorInfo& t : file.tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo& prev = *by_offset[i - 1];
    const TensorInfo& cur = *by_offset[i];
    if (cur.begin < prev.end) {
      fail("tensors " + Quote(prev.name) + " [" + std::to_string(prev.begin) + ", " +
           std::to_string(prev.end) + ") and " + Quote(cur.name) + " [" + std::to_string(cur.begin) +
           ", " + std::to_string(cur.end) + ") overlap");
    }
  }

  file.data_start_ = kHeaderSizeBytes + header_size;
  file.view_ = std::move(view);
  return file;
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

std::vector<float> SafetensorsFile::ReadFloat(std::string_view name) const {
  const TensorInfo* t = Find(name);
  if (t == nullptr) throw Error(source_ + ": no tensor " + Quote(std::string(name)));
  std::vector<float> out(static_cast<size_t>(t->NumElements()));
  ReadInto(name, t->shape, out.data());
  return out;
}

void SafetensorsFile::ReadInto(std::string_view name, const std::vector<int64_t>& shape,
                               float* out) const {
  const TensorInfo* t = Find(name);
  if (t == nullptr) throw Error(source_ + ": no tensor " + Quote(std::string(name)));
  if (t->shape != shape) {
    throw Error(source_ + ": tensor " + Quote(t->name) + " has shape " + ShapeString(t->shape) +
                ", expected " + ShapeString(shape));
  }
  // Offsets were checked against the data section in Parse.
  const char* src = view_.bytes.data() + data_start_ + t->begin;
  const size_t n = static_cast<size_t>(t->NumElements());
  // An empty tensor may come with out == nullptr (an empty vector's data()),
  // which memcpy must not see even for zero bytes (found by libFuzzer/UBSan).
  if (n == 0) return;
  bytes_read_ += t->end - t->begin;
  if (t->dtype == DType::kF32) {
    std::memcpy(out, src, n * sizeof(float));
  } else {
    // Element by element through memcpy: the data carries no alignment.
    for (size_t i = 0; i < n; ++i) {
      uint16_t v;
      std::memcpy(&v, src + 2 * i, sizeof v);
      out[i] = t->dtype == DType::kF16 ? HalfToFloat(v) : BFloat16ToFloat(v);
    }
  }
  // The copy is what the caller keeps: the file's pages need not stay.
  DropPages(view_, src, t->end - t->begin);
}

uint16_t FloatToBFloat16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0)
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);  // a quiet NaN
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

void WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  const Fail fail{path};

  // ordered_json keeps insertion order: __metadata__ first, then the
  // tensors in the caller's order, matching their order in the data.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<uint64_t> byte_counts;
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    if (t.name == "__metadata__" || header.contains(t.name)) {
      fail("cannot write tensor " + Quote(t.name) + ": the name is reserved or repeated");
    }
    uint64_t elements = 1;
    for (int64_t d : t.shape) {
      if (d < 0 || __builtin_mul_overflow(elements, static_cast<uint64_t>(d), &elements)) {
        fail("cannot write tensor " + Quote(t.name) + ": bad shape " + ShapeString(t.shape));
      }
    }
    if (elements > 0 && t.data == nullptr && !t.fill) fail("cannot write tensor " + Quote(t.name) + ": no data");
    if (t.dtype != DType::kF32 && t.dtype != DType::kBF16)
      fail("cannot write tensor " + Quote(t.name) + ": only F32 and BF16 are written");
    const bool bf16 = t.dtype == DType::kBF16;
    uint64_t bytes;
    if (__builtin_mul_overflow(elements, bf16 ? sizeof(uint16_t) : sizeof(float), &bytes) || offset + bytes < offset) {
      fail("cannot write tensor " + Quote(t.name) + ": too large");
    }
    header[t.name] = {{"dtype", bf16 ? "BF16" : "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    byte_counts.push_back(bytes);
    offset += bytes;
  }

  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::ordered_json::type_error&) {
    fail("a tensor name or metadata string is not valid UTF-8");
  }
  // Pad with spaces so the data section starts 8-byte aligned, as Hugging
  // Face's writer does (readers may then map F32/F64 data in place).
  text.append((8 - text.size() % 8) % 8, ' ');

  FileWriter out(path);
  const uint64_t header_size = text.size();
  out.Write(&header_size, sizeof header_size);  // little-endian host
  out.Write(text.data(), text.size());
  std::vector<float> piece;  // a filled tensor's current piece
  std::vector<uint16_t> narrow;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const bool bf16 = tensors[i].dtype == DType::kBF16;
    const auto n = static_cast<int64_t>(byte_counts[i] / (bf16 ? sizeof(uint16_t) : sizeof(float)));
    for (int64_t first = 0; first < n; first += TensorToWrite::kFillFloats) {
      const int64_t count = std::min(n - first, TensorToWrite::kFillFloats);
      const float* data = tensors[i].data ? tensors[i].data + first : nullptr;
      if (!data) {
        piece.resize(static_cast<size_t>(count));
        tensors[i].fill(first, count, piece.data());
        data = piece.data();
      }
      if (!bf16) {
        out.Write(data, static_cast<size_t>(count) * sizeof(float));
        continue;
      }
      narrow.resize(static_cast<size_t>(count));
      for (int64_t k = 0; k < count; ++k) narrow[k] = FloatToBFloat16(data[k]);
      out.Write(narrow.data(), static_cast<size_t>(count) * sizeof(uint16_t));
    }
  }
  out.Finish();
}

}  // namespace hetermoe::io
