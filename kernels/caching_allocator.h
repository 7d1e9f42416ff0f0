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
// Streams: every block belongs to the stream it was allocated for
// (Allocate's `stream`; null is the owner's one compute stream). A freed
// block goes back to that stream's pool and is given only to allocations for
// the same stream, whose work the stream orders after the old user's. A
// block that work on other streams also used (RecordStream, e.g. an NCCL
// stream reading a packed buffer) is reusable only once events recorded on
// those streams at Free() have completed, as PyTorch's allocator does; until
// then it is pending. So a kernel can never get memory another stream may
// still read or write.
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
#include <vector>

namespace hetermoe::kernels {

class CachingAllocator {
 public:
  struct Backing {
    std::function<void*(size_t)> allocate;  // nullptr on failure
    std::function<void(void*)> release;
    // Events, for blocks used on other streams (RecordStream): one recorded
    // on `stream` now, whether it has completed, and its disposal.
    std::function<void*(void* stream)> record_event;
    std::function<bool(void* event)> event_done;
    std::function<void(void* event)> destroy_event;
  };
  struct Stats {
    size_t bytes_in_use = 0;     // handed out, not yet freed (rounded sizes)
    size_t bytes_cached = 0;     // held in the cache (free, or pending other streams' events)
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

  // A block of at least `bytes` for work on `stream` (nullptr for 0 bytes);
  // throws hetermoe::Error when the backing cannot provide it even after
  // emptying the cache.
  void* Allocate(size_t bytes, void* stream = nullptr);
  // Work on `stream` (not the block's own) uses `ptr` too: Free() makes the
  // block wait for it. Needs the backing's events.
  void RecordStream(void* ptr, void* stream);
  // Returns a block from Allocate (nullptr is ignored) to the cache.
  void Free(void* ptr);
  // Releases every cached free block to the backing (pending ones stay).
  void EmptyCache();
  Stats stats() const;

  static size_t RoundUp(size_t bytes);

 private:
  struct Block {
    size_t size = 0;
    void* stream = nullptr;              // whose pool it returns to
    std::vector<void*> other_streams;    // RecordStream
  };
  struct Pending {
    void* ptr;
    Block block;
    std::vector<void*> events;
  };
  void EmptyCacheLocked();
  void CollectPendingLocked();  // pending blocks whose events completed go back to their pools

  Backing backing_;
  mutable std::mutex mu_;
  std::map<void*, std::multimap<size_t, void*>> free_blocks_;  // stream -> size -> block
  std::unordered_map<void*, Block> in_use_;
  std::vector<Pending> pending_;
  Stats stats_;
};

}  // namespace hetermoe::kernels
