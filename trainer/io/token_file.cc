// Token files (llm.c layout, with or without its header; see token_file.h).
#include "trainer/io/token_file.h"

#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>

#include "common/error.h"

namespace hetermoe::io {
namespace {

static_assert(std::endian::native == std::endian::little, "token files are little-endian");

// llm.c's header: 256 int32, [0] magic, [1] version (1: uint16 ids, 2:
// uint32 ids), [2] number of tokens (-1: the uint64 in [3..4]); the rest is zero.
constexpr int kHeaderInts = 256;
constexpr size_t kHeaderBytes = kHeaderInts * sizeof(int32_t);
constexpr int32_t kMagic = 20240520;

}  // namespace

std::array<int32_t, 256> EncodeTokenHeader(int64_t count, int id_bytes) {
  std::array<int32_t, kHeaderInts> header{};
  header[0] = kMagic;
  header[1] = id_bytes == 2 ? 1 : 2;
  if (count <= std::numeric_limits<int32_t>::max()) {
    header[2] = static_cast<int32_t>(count);
  } else {
    const auto wide = static_cast<uint64_t>(count);
    header[2] = -1;
    header[3] = static_cast<int32_t>(static_cast<uint32_t>(wide));
    header[4] = static_cast<int32_t>(static_cast<uint32_t>(wide >> 32));
  }
  return header;
}

TokenFile::TokenFile(const std::string& path, int64_t vocab_size) : path_(path), vocab_size_(vocab_size) {
  if (vocab_size <= 0) throw Error(path + ": vocabulary size " + std::to_string(vocab_size) + " is not positive");
  view_ = MapFile(path);
  const std::string_view bytes = view_.bytes;
  if (bytes.empty()) throw Error(path + ": empty token file");

  // A headerless file whose first two uint16 ids happen to spell the magic
  // would be misread, as it would be by llm.c; ids 55240, 308 are the price.
  int32_t magic = 0;
  if (bytes.size() >= sizeof magic) std::memcpy(&magic, bytes.data(), sizeof magic);
  if (bytes.size() >= kHeaderBytes && magic == kMagic) {
    int32_t header[kHeaderInts];
    std::memcpy(header, bytes.data(), kHeaderBytes);
    const int32_t version = header[1];
    if (version != 1 && version != 2) {
      throw Error(path + ": llm.c header version " + std::to_string(version) +
                  " is not supported (1: uint16 ids, 2: uint32 ids)");
    }
    id_bytes_ = version == 1 ? 2 : 4;
    int64_t count = header[2];
    if (count == -1) {
      const uint64_t wide = static_cast<uint32_t>(header[3]) | uint64_t{static_cast<uint32_t>(header[4])} << 32;
      count = wide > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ? 0 : static_cast<int64_t>(wide);
    }
    if (count <= 0) throw Error(path + ": llm.c header says the file holds " + std::to_string(count) + " tokens");
    const size_t data_bytes = bytes.size() - kHeaderBytes;
    // As llm.c does, insist the header and the size agree: a mismatch means
    // a truncated or concatenated file.
    if (data_bytes / id_bytes_ != static_cast<uint64_t>(count) || data_bytes % id_bytes_ != 0) {
      throw Error(path + ": llm.c header says " + std::to_string(count) + " tokens of " +
                  std::to_string(id_bytes_) + " bytes but " + std::to_string(data_bytes) +
                  " bytes of tokens follow it");
    }
    count_ = count;
    data_offset_ = kHeaderBytes;
  } else {
    // No header: the width follows from the vocabulary.
    id_bytes_ = vocab_size > 65535 ? 4 : 2;
    if (bytes.size() % id_bytes_ != 0) {
      throw Error(path + ": file size " + std::to_string(bytes.size()) + " is not a multiple of the " +
                  std::to_string(id_bytes_) + "-byte token size (and there is no llm.c header)");
    }
    count_ = static_cast<int64_t>(bytes.size() / id_bytes_);
  }
  ids_ = bytes.data() + data_offset_;
}

void TokenFile::Read(int64_t first, int64_t count, uint32_t* out) const {
  if (first < 0 || count < 0 || first > count_ - count)
    throw Error(path_ + ": tokens [" + std::to_string(first) + ", " + std::to_string(first + count) +
                ") are outside the file's " + std::to_string(count_));
  for (int64_t i = 0; i < count; ++i) {
    const char* at = ids_ + static_cast<size_t>(first + i) * id_bytes_;
    uint32_t id;
    if (id_bytes_ == 2) {
      uint16_t narrow;
      std::memcpy(&narrow, at, sizeof narrow);
      id = narrow;
    } else {
      std::memcpy(&id, at, sizeof id);
    }
    if (static_cast<int64_t>(id) >= vocab_size_) {
      throw Error(path_ + ": token at position " + std::to_string(first + i) + " (byte offset " +
                  std::to_string(data_offset_ + static_cast<size_t>(first + i) * id_bytes_) + ") is " +
                  std::to_string(id) + ", not below the vocabulary size " + std::to_string(vocab_size_));
    }
    out[i] = id;
  }
  bytes_read_ += static_cast<uint64_t>(count) * id_bytes_;
}

std::vector<uint32_t> LoadTokenFile(const std::string& path, int64_t vocab_size) {
  const TokenFile file(path, vocab_size);
  std::vector<uint32_t> tokens(static_cast<size_t>(file.size()));
  file.Read(0, file.size(), tokens.data());
  return tokens;
}

void WriteTokenFile(const std::string& path, const std::vector<uint32_t>& tokens) {
  bool fits_uint16 = true;
  for (uint32_t id : tokens) fits_uint16 = fits_uint16 && id <= 0xffff;
  TokenFileWriter out(path, fits_uint16 ? 2 : 4);
  out.Append(tokens.data(), tokens.size());
  out.Finish();
}

namespace {
std::string TemporaryBeside(const std::string& path) {
  const size_t slash = path.rfind('/');
  const size_t name = slash == std::string::npos ? 0 : slash + 1;
  return path.substr(0, name) + "." + path.substr(name) + ".tmp-" + std::to_string(::getpid());
}
}  // namespace

TokenFileWriter::TokenFileWriter(const std::string& path, int id_bytes)
    : path_(path), tmp_(TemporaryBeside(path)), out_(tmp_), id_bytes_(id_bytes) {
  if (id_bytes != 2 && id_bytes != 4) throw Error(path + ": token ids are 2 or 4 bytes, not " + std::to_string(id_bytes));
  const std::array<int32_t, kHeaderInts> placeholder{};  // the header, once the count is known
  out_.Write(placeholder.data(), sizeof placeholder);
}

TokenFileWriter::~TokenFileWriter() {
  if (!finished_) ::unlink(tmp_.c_str());
}

void TokenFileWriter::Append(const uint32_t* ids, size_t count) {
  if (id_bytes_ == 4) {
    out_.Write(ids, count * sizeof(uint32_t));
  } else {
    narrow_.resize(count);
    for (size_t i = 0; i < count; ++i) {
      if (ids[i] > 0xffff)
        throw Error(path_ + ": token " + std::to_string(ids[i]) + " does not fit the file's 2-byte ids");
      narrow_[i] = static_cast<uint16_t>(ids[i]);
    }
    out_.Write(narrow_.data(), count * sizeof(uint16_t));
  }
  count_ += static_cast<int64_t>(count);
}

void TokenFileWriter::Finish() {
  if (count_ == 0) throw Error(path_ + ": no tokens to write");  // an empty file cannot be loaded
  const std::array<int32_t, kHeaderInts> header = EncodeTokenHeader(count_, id_bytes_);
  out_.WriteAt(0, header.data(), sizeof header);
  out_.Finish();
  if (::rename(tmp_.c_str(), path_.c_str()) != 0)
    throw Error(path_ + ": cannot move the written tokens into place: " + std::strerror(errno));
  finished_ = true;
}

}  // namespace hetermoe::io
