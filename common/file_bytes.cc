// Whole-file reads and checked, fsync'ed writes (see file_bytes.h).
#include "common/file_bytes.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

#include "common/error.h"

namespace hetermoe::io {
namespace {

[[noreturn]] void ThrowErrno(const std::string& path, const char* what, int err) {
  throw Error(path + ": " + what + ": " + std::strerror(err));
}

}  // namespace

std::string ReadFileBytes(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) ThrowErrno(path, "cannot open", errno);
  std::string bytes;
  try {
    struct stat st;
    if (::fstat(fd, &st) != 0) ThrowErrno(path, "cannot stat", errno);
    if (S_ISDIR(st.st_mode)) ThrowErrno(path, "cannot read", EISDIR);
    // st_size is a hint (0 for pipes and /proc files): read until EOF.
    if (S_ISREG(st.st_mode) && st.st_size > 0) bytes.reserve(static_cast<size_t>(st.st_size));
    char buffer[1 << 16];
    for (;;) {
      ssize_t n = ::read(fd, buffer, sizeof buffer);
      if (n < 0) {
        if (errno == EINTR) continue;
        ThrowErrno(path, "cannot read", errno);
      }
      if (n == 0) break;
      bytes.append(buffer, static_cast<size_t>(n));
    }
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  return bytes;
}

FileWriter::FileWriter(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) ThrowErrno(path_, "cannot create", errno);
}

FileWriter::~FileWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void FileWriter::Write(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd_, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      ThrowErrno(path_, "cannot write", errno);
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
}

void FileWriter::WriteAt(uint64_t offset, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::pwrite(fd_, p, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      ThrowErrno(path_, "cannot write", errno);
    }
    p += n, offset += static_cast<uint64_t>(n);
    size -= static_cast<size_t>(n);
  }
}

void FileWriter::Finish() {
  // fsync before close so that a checkpoint directory renamed into place
  // afterwards never holds a file whose data is still only in the page cache.
  if (::fsync(fd_) != 0) ThrowErrno(path_, "cannot fsync", errno);
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) ThrowErrno(path_, "cannot close", errno);
}

namespace {

// A read-only private mapping of a whole file, unmapped with the last owner.
struct Mapping {
  void* data = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (data != nullptr) ::munmap(data, size);
  }
};

}  // namespace

FileView MapFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) ThrowErrno(path, "cannot open", errno);
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) {
    ::close(fd);
    auto text = std::make_shared<const std::string>(ReadFileBytes(path));
    const std::string_view bytes(*text);
    return {std::move(text), bytes, false};
  }
  auto mapping = std::make_shared<Mapping>();
  mapping->size = static_cast<size_t>(st.st_size);
  void* data = ::mmap(nullptr, mapping->size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);
  if (data == MAP_FAILED) ThrowErrno(path, "cannot map", err);
  mapping->data = data;
  const std::string_view bytes(static_cast<const char*>(data), mapping->size);
  return {std::move(mapping), bytes, true};
}

void DropPages(const FileView& view, const char* data, size_t size) {
  if (!view.mapped || size == 0) return;
  // Only whole pages inside the range: a page shared with a neighbour stays.
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + size) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

}  // namespace hetermoe::io
