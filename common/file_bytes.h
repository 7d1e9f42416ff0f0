// File access shared by the config reader (common/) and the trainer's io
// library: read a whole file, and write one with every error checked and the
// data fsync'ed before returning.
//
// Every failure throws hetermoe::Error of the form
// `<path>: <what failed>: <strerror>`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace hetermoe::io {

// The whole file as bytes. A missing file gives `<path>: cannot open: ...`.
std::string ReadFileBytes(const std::string& path);

// A whole file, read-only, without reading it: a regular file is
// memory-mapped (only the pages touched come into memory, and the kernel may
// drop them again), anything else (a pipe, /proc, an empty file) is read.
// `owner` keeps `bytes` valid; copies share it.
struct FileView {
  std::shared_ptr<const void> owner;
  std::string_view bytes;
  bool mapped = false;
};
FileView MapFile(const std::string& path);

// Tells the kernel a mapped view's pages holding [data, data + size) are not
// needed for now: they leave the process's resident memory and are read from
// the file again if touched. A no-op for a view that was read.
void DropPages(const FileView& view, const char* data, size_t size);

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
  // Overwrites bytes already written (a header patched at the end); the
  // position of Write is unchanged.
  void WriteAt(uint64_t offset, const void* data, size_t size);
  void Finish();

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace hetermoe::io
