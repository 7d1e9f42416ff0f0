#include "kernels/caching_allocator.h"

#include <algorithm>
#include <string>

#include "common/error.h"

namespace hetermoe::kernels {

CachingAllocator::CachingAllocator(Backing backing) : backing_(std::move(backing)) {}

CachingAllocator::~CachingAllocator() {
  std::lock_guard<std::mutex> lock(mu_);
  EmptyCacheLocked();
  for (Pending& p : pending_) {
    for (void* e : p.events) backing_.destroy_event(e);
    backing_.release(p.ptr);
  }
  pending_.clear();
  for (auto& [ptr, block] : in_use_) backing_.release(ptr);
  in_use_.clear();
}

size_t CachingAllocator::RoundUp(size_t bytes) {
  const size_t g = bytes < kLargeThreshold ? kSmallGranularity : kLargeGranularity;
  return (bytes + g - 1) / g * g;
}

void* CachingAllocator::Allocate(size_t bytes, void* stream) {
  if (bytes == 0) return nullptr;
  const size_t size = RoundUp(bytes);
  std::lock_guard<std::mutex> lock(mu_);
  CollectPendingLocked();
  auto& pool = free_blocks_[stream];
  auto it = pool.lower_bound(size);
  if (it != pool.end() && it->first <= 2 * size) {
    void* ptr = it->second;
    const size_t block = it->first;
    pool.erase(it);
    in_use_[ptr] = Block{block, stream, {}};
    stats_.bytes_cached -= block;
    stats_.bytes_in_use += block;
    ++stats_.cache_hits;
    return ptr;
  }
  void* ptr = backing_.allocate(size);
  if (ptr == nullptr) {
    EmptyCacheLocked();
    ptr = backing_.allocate(size);
  }
  if (ptr == nullptr)
    throw Error("device memory exhausted: cannot allocate " + std::to_string(size) +
                " bytes (" + std::to_string(stats_.bytes_in_use) + " bytes in use)");
  in_use_[ptr] = Block{size, stream, {}};
  stats_.bytes_in_use += size;
  ++stats_.backing_allocations;
  return ptr;
}

void CachingAllocator::RecordStream(void* ptr, void* stream) {
  if (ptr == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  const auto it = in_use_.find(ptr);
  if (it == in_use_.end()) throw Error("CachingAllocator::RecordStream of a pointer it did not allocate");
  if (!backing_.record_event) throw Error("CachingAllocator::RecordStream: the backing has no events");
  Block& b = it->second;
  if (stream != b.stream && std::find(b.other_streams.begin(), b.other_streams.end(), stream) == b.other_streams.end())
    b.other_streams.push_back(stream);
}

void CachingAllocator::Free(void* ptr) {
  if (ptr == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  const auto it = in_use_.find(ptr);
  if (it == in_use_.end()) throw Error("CachingAllocator::Free of a pointer it did not allocate");
  Block block = std::move(it->second);
  in_use_.erase(it);
  stats_.bytes_in_use -= block.size;
  stats_.bytes_cached += block.size;
  if (block.other_streams.empty()) {
    free_blocks_[block.stream].emplace(block.size, ptr);
    return;
  }
  Pending p{ptr, std::move(block), {}};
  for (void* s : p.block.other_streams) p.events.push_back(backing_.record_event(s));
  pending_.push_back(std::move(p));
}

void CachingAllocator::CollectPendingLocked() {
  for (size_t i = 0; i < pending_.size();) {
    Pending& p = pending_[i];
    if (!std::all_of(p.events.begin(), p.events.end(), [&](void* e) { return backing_.event_done(e); })) {
      ++i;
      continue;
    }
    for (void* e : p.events) backing_.destroy_event(e);
    free_blocks_[p.block.stream].emplace(p.block.size, p.ptr);
    pending_[i] = std::move(pending_.back());
    pending_.pop_back();
  }
}

void CachingAllocator::EmptyCache() {
  std::lock_guard<std::mutex> lock(mu_);
  EmptyCacheLocked();
}

void CachingAllocator::EmptyCacheLocked() {
  CollectPendingLocked();
  for (auto& [stream, pool] : free_blocks_)
    for (auto& [size, ptr] : pool) {
      backing_.release(ptr);
      stats_.bytes_cached -= size;
    }
  free_blocks_.clear();
}

CachingAllocator::Stats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace hetermoe::kernels
