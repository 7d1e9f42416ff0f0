// File access shared by the config reader (common/) and the trainer's io
// library: read a whole file, and write one with every error checked and the
// data fsync'ed before returning.
//
// Every failure throws hetermoe::Error of the form
// `<path>: <what failed>: <strerror>`.
#pragma once

#include <cstddef>
#include <string>

namespace hetermoe::io {

// The whole file as bytes. A missing file gives `<path>: cannot open: ...`.
std::string ReadFileBytes(const std::string& path);

// Creates or truncates `path` and writes it in pieces. Finish() fsyncs and
// closes; the destructor closes without syncing (used only when an error
// has already been thrown, so the partial file is the caller's to discard).
// Not thread-safe.
class FileWriter {
 public:
  explicit FileWriter(const std::string& path);
  ~FileWriter();
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;

  void Write(const void* data, size_t size);
  void Finish();

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace hetermoe::io
