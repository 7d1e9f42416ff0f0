// Token files (llm.c layout, with or without its header), byte-level
// tokenisation, and the llm.c-order batch reader (see token_file.h).
#include "trainer/io/token_file.h"

#include <bit>
#include <cstring>
#include <limits>

#include "common/error.h"
#include "common/file_bytes.h"

namespace hetermoe::io {
namespace {

static_assert(std::endian::native == std::endian::little, "token files are little-endian");

// llm.c's header: 256 int32, [0] magic, [1] version (1: uint16 ids, 2:
// uint32 ids), [2] number of tokens; the rest is zero.
constexpr int kHeaderInts = 256;
constexpr size_t kHeaderBytes = kHeaderInts * sizeof(int32_t);
constexpr int32_t kMagic = 20240520;

template <typename Id>
std::vector<uint32_t> DecodeIds(const char* data, size_t count, int64_t vocab_size,
                                const std::string& path, size_t data_offset) {
  std::vector<uint32_t> tokens(count);
  for (size_t i = 0; i < count; ++i) {
    Id id;
    std::memcpy(&id, data + i * sizeof(Id), sizeof id);
    if (static_cast<int64_t>(id) >= vocab_size) {
      throw Error(path + ": token at position " + std::to_string(i) + " (byte offset " +
                  std::to_string(data_offset + i * sizeof(Id)) + ") is " + std::to_string(id) +
                  ", not below the vocabulary size " + std::to_string(vocab_size));
    }
    tokens[i] = id;
  }
  return tokens;
}

}  // namespace

std::vector<uint32_t> LoadTokenFile(const std::string& path, int64_t vocab_size) {
  if (vocab_size <= 0) throw Error(path + ": vocabulary size " + std::to_string(vocab_size) + " is not positive");
  const std::string bytes = ReadFileBytes(path);
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
    const size_t token_size = version == 1 ? 2 : 4;
    const int64_t count = header[2];
    if (count <= 0) throw Error(path + ": llm.c header says the file holds " + std::to_string(count) + " tokens");
    const size_t data_bytes = bytes.size() - kHeaderBytes;
    // As llm.c does, insist the header and the size agree: a mismatch means
    // a truncated or concatenated file.
    if (data_bytes != static_cast<size_t>(count) * token_size) {
      throw Error(path + ": llm.c header says " + std::to_string(count) + " tokens of " +
                  std::to_string(token_size) + " bytes but " + std::to_string(data_bytes) +
                  " bytes of tokens follow it");
    }
    const char* data = bytes.data() + kHeaderBytes;
    return version == 1 ? DecodeIds<uint16_t>(data, count, vocab_size, path, kHeaderBytes)
                        : DecodeIds<uint32_t>(data, count, vocab_size, path, kHeaderBytes);
  }

  // No header: the width follows from the vocabulary.
  const size_t token_size = vocab_size > 65535 ? 4 : 2;
  if (bytes.size() % token_size != 0) {
    throw Error(path + ": file size " + std::to_string(bytes.size()) + " is not a multiple of the " +
                std::to_string(token_size) + "-byte token size (and there is no llm.c header)");
  }
  const size_t count = bytes.size() / token_size;
  return token_size == 2 ? DecodeIds<uint16_t>(bytes.data(), count, vocab_size, path, 0)
                         : DecodeIds<uint32_t>(bytes.data(), count, vocab_size, path, 0);
}

void WriteTokenFile(const std::string& path, const std::vector<uint32_t>& tokens) {
  // The header counts tokens in an int32, and an empty file cannot be loaded.
  if (tokens.empty()) throw Error(path + ": no tokens to write");
  if (tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    throw Error(path + ": " + std::to_string(tokens.size()) + " tokens exceed the llm.c header's int32 count");
  }
  bool fits_uint16 = true;
  for (uint32_t id : tokens) fits_uint16 = fits_uint16 && id <= 0xffff;

  int32_t header[kHeaderInts] = {};
  header[0] = kMagic;
  header[1] = fits_uint16 ? 1 : 2;
  header[2] = static_cast<int32_t>(tokens.size());

  FileWriter out(path);
  out.Write(header, sizeof header);
  if (fits_uint16) {
    std::vector<uint16_t> narrow(tokens.begin(), tokens.end());
    out.Write(narrow.data(), narrow.size() * sizeof(uint16_t));
  } else {
    out.Write(tokens.data(), tokens.size() * sizeof(uint32_t));
  }
  out.Finish();
}

BatchReader::BatchReader(const std::vector<uint32_t>* tokens, int64_t batch, int64_t seq_len,
                         const std::string& source)
    : tokens_(tokens), batch_(batch), seq_len_(seq_len), source_(source) {
  if (tokens_ == nullptr) throw Error(source_ + ": no tokens");
  if (batch_ <= 0 || seq_len_ <= 0) {
    throw Error(source_ + ": batch " + std::to_string(batch_) + " and sequence length " +
                std::to_string(seq_len_) + " must be positive");
  }
  int64_t span;
  if (__builtin_mul_overflow(batch_, seq_len_, &span) || span == std::numeric_limits<int64_t>::max() ||
      static_cast<uint64_t>(span) + 1 > tokens_->size()) {
    throw Error(source_ + ": " + std::to_string(tokens_->size()) + " tokens are fewer than one batch of " +
                std::to_string(batch_) + " x " + std::to_string(seq_len_) + " + 1");
  }
}

void BatchReader::Next(int32_t* inputs, int32_t* targets) {
  // Invariant: position_ + B*T + 1 <= size, kept by the constructor,
  // set_position and the wrap below.
  const int64_t span = batch_ * seq_len_;
  const uint32_t* from = tokens_->data() + position_;
  for (int64_t i = 0; i < span; ++i) {
    inputs[i] = static_cast<int32_t>(from[i]);
    targets[i] = static_cast<int32_t>(from[i + 1]);
  }
  position_ += span;
  if (position_ + span + 1 > static_cast<int64_t>(tokens_->size())) position_ = 0;
}

void BatchReader::set_position(int64_t position) {
  const int64_t last = static_cast<int64_t>(tokens_->size()) - batch_ * seq_len_ - 1;
  if (position < 0 || position > last) {
    throw Error(source_ + ": position " + std::to_string(position) + " is outside [0, " +
                std::to_string(last) + "], the start of the last whole batch");
  }
  position_ = position;
}

}  // namespace hetermoe::io
