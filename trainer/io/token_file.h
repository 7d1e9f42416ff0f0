// Token files of docs/model.md ("Token data").
//
// A token file is a flat little-endian array of uint16 token ids (uint32 when
// the llm.c header says so or the vocabulary exceeds 65535), optionally
// behind llm.c's 256 x int32 header (magic 20240520, version 1 = uint16,
// 2 = uint32, header[2] = number of tokens; files of 2^31 tokens or more set
// header[2] = -1 and the count as a uint64 in header[3..4], low half first).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "common/file_bytes.h"

namespace hetermoe::io {

// Pure: the header for `count` ids of `id_bytes` (2 or 4) bytes each.
std::array<int32_t, 256> EncodeTokenHeader(int64_t count, int id_bytes);

// A token file, memory-mapped: opening checks its header and size only; ids
// are read, and checked against the vocabulary, where a batch needs them, so
// a process touches only the pages of the sequences it reads. Counts are
// 64-bit. Not thread-safe (Read counts the bytes it copies).
class TokenFile {
 public:
  // Errors name the file: missing, empty, a bad header, a size that is not
  // whole ids or disagrees with the header.
  TokenFile(const std::string& path, int64_t vocab_size);

  const std::string& path() const { return path_; }
  int64_t size() const { return count_; }  // tokens
  // Copies tokens [first, first + count) to out; an id not below the
  // vocabulary is an error naming the file, its position and byte offset.
  void Read(int64_t first, int64_t count, uint32_t* out) const;
  // Bytes of ids Read() has copied so far (a token read twice counts twice).
  uint64_t bytes_read() const { return bytes_read_; }

 private:
  std::string path_;
  FileView view_;
  const char* ids_ = nullptr;  // the first id
  int64_t count_ = 0, vocab_size_ = 0;
  size_t id_bytes_ = 2, data_offset_ = 0;
  mutable uint64_t bytes_read_ = 0;
};

// Every token of a file, checked (prepare-data's tests; the trainer reads
// through TokenFile).
std::vector<uint32_t> LoadTokenFile(const std::string& path, int64_t vocab_size);

// Writes tokens with the header (uint16 when every id fits, else uint32).
void WriteTokenFile(const std::string& path, const std::vector<uint32_t>& tokens);

// Writes a token file as its ids come, holding none of them: ids of
// `id_bytes` (2 or 4) after a header that Finish fills in with the count
// (64-bit when it passes int32). An id that does not fit id_bytes, or a file
// without ids, is an error naming the file. The ids go to a hidden file
// beside `path`, renamed to it by Finish, so that no half-written file is
// ever found under the name (a writer destroyed before Finish removes it).
class TokenFileWriter {
 public:
  TokenFileWriter(const std::string& path, int id_bytes);
  ~TokenFileWriter();
  TokenFileWriter(const TokenFileWriter&) = delete;
  TokenFileWriter& operator=(const TokenFileWriter&) = delete;
  void Append(const uint32_t* ids, size_t count);
  int64_t count() const { return count_; }
  void Finish();

 private:
  std::string path_, tmp_;
  FileWriter out_;
  int id_bytes_;
  int64_t count_ = 0;
  bool finished_ = false;
  std::vector<uint16_t> narrow_;
};

}  // namespace hetermoe::io
