// CachingAllocator: keeps freed device blocks for reuse instead of returning
// them to the driver, because cudaMalloc/cudaFree synchronise the device and
// cost milliseconds, while the trainer allocates the same sizes every step.
//
// Policy (simple on purpose):
//  - sizes are rounded up to kSmallGranularity (512 B) below 1 MiB and to
//    kLargeGranularity (2 MiB) above, so steps that differ slightly reuse;
//  - a request takes the smallest cached block that fits and is at most twice
//    its rounded size (a tiny request never pins a huge block);
//  - when the backing allocation fails, the cache is released and the
//    allocation tried once more before giving up.
//
// Stream semantics: a block handed back with Free() may be given to the next
// Allocate() at once. That is safe when all work using the blocks is ordered
// on one stream (the backend's compute stream): the new user's kernels run
// after the old user's. Work on another stream must synchronise first.
//
// The backing (cudaMalloc/cudaFree on a GPU, malloc/free in the CPU tests) is
// injected, so the policy is tested without a GPU. Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <unordered_map>

namespace hetermoe::kernels {

class CachingAllocator {
 public:
  struct Backing {
    std::function<void*(size_t)> allocate;  // nullptr on failure
    std::function<void(void*)> release;
  };
  struct Stats {
    size_t bytes_in_use = 0;     // handed out, not yet freed (rounded sizes)
    size_t bytes_cached = 0;     // held in the cache, free for reuse
    int64_t backing_allocations = 0;
    int64_t cache_hits = 0;
  };

  static constexpr size_t kSmallGranularity = 512;
  static constexpr size_t kLargeThreshold = size_t{1} << 20;
  static constexpr size_t kLargeGranularity = size_t{2} << 20;

  explicit CachingAllocator(Backing backing);
  // Releases every cached block. Blocks still in use are released too (their
  // owners must not outlive the allocator).
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // A block of at least `bytes` (nullptr for 0 bytes); throws hetermoe::Error
  // when the backing cannot provide it even after emptying the cache.
  void* Allocate(size_t bytes);
  // Returns a block from Allocate (nullptr is ignored) to the cache.
  void Free(void* ptr);
  // Releases every cached (free) block to the backing.
  void EmptyCache();
  Stats stats() const;

  static size_t RoundUp(size_t bytes);

 private:
  void EmptyCacheLocked();

  Backing backing_;
  mutable std::mutex mu_;
  std::multimap<size_t, void*> free_blocks_;      // size -> block
  std::unordered_map<void*, size_t> in_use_;      // block -> size
  Stats stats_;
};

}  // namespace hetermoe::kernels
