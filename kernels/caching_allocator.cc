#include "kernels/caching_allocator.h"

#include <string>

#include "common/error.h"

namespace hetermoe::kernels {

CachingAllocator::CachingAllocator(Backing backing) : backing_(std::move(backing)) {}

CachingAllocator::~CachingAllocator() {
  std::lock_guard<std::mutex> lock(mu_);
  EmptyCacheLocked();
  for (auto& [ptr, size] : in_use_) backing_.release(ptr);
  in_use_.clear();
}

size_t CachingAllocator::RoundUp(size_t bytes) {
  const size_t g = bytes < kLargeThreshold ? kSmallGranularity : kLargeGranularity;
  return (bytes + g - 1) / g * g;
}

void* CachingAllocator::Allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  const size_t size = RoundUp(bytes);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = free_blocks_.lower_bound(size);
  if (it != free_blocks_.end() && it->first <= 2 * size) {
    void* ptr = it->second;
    const size_t block = it->first;
    free_blocks_.erase(it);
    in_use_[ptr] = block;
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
  in_use_[ptr] = size;
  stats_.bytes_in_use += size;
  ++stats_.backing_allocations;
  return ptr;
}

void CachingAllocator::Free(void* ptr) {
  if (ptr == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  const auto it = in_use_.find(ptr);
  if (it == in_use_.end()) throw Error("CachingAllocator::Free of a pointer it did not allocate");
  const size_t size = it->second;
  in_use_.erase(it);
  free_blocks_.emplace(size, ptr);
  stats_.bytes_in_use -= size;
  stats_.bytes_cached += size;
}

void CachingAllocator::EmptyCache() {
  std::lock_guard<std::mutex> lock(mu_);
  EmptyCacheLocked();
}

void CachingAllocator::EmptyCacheLocked() {
  for (auto& [size, ptr] : free_blocks_) backing_.release(ptr);
  free_blocks_.clear();
  stats_.bytes_cached = 0;
}

CachingAllocator::Stats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace hetermoe::kernels
