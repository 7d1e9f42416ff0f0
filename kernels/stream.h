// Owning wrappers for CUDA streams and events, and a device buffer drawn from
// a CachingAllocator. Host code only; every call is checked (HM_CUDA_CHECK).
//
// Ordering between streams is always expressed with events: the producer
// records an Event on its stream, the consumer's stream waits on it
// (Stream::Wait), so no host synchronisation is needed. Objects are movable,
// not copyable, and not thread-safe.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#include "kernels/caching_allocator.h"
#include "kernels/cuda_check.h"

namespace hetermoe::kernels {

class Event {
 public:
  // Timing events cost more to record; ordering-only events disable timing.
  explicit Event(bool timing = false) {
    HM_CUDA_CHECK(cudaEventCreateWithFlags(&event_, timing ? cudaEventDefault : cudaEventDisableTiming));
  }
  ~Event() {
    if (event_) cudaEventDestroy(event_);
  }
  Event(Event&& o) noexcept : event_(std::exchange(o.event_, nullptr)) {}
  Event& operator=(Event&& o) noexcept {
    std::swap(event_, o.event_);
    return *this;
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  void Record(cudaStream_t stream) { HM_CUDA_CHECK(cudaEventRecord(event_, stream)); }
  // True when all work captured by the last Record has finished.
  bool Done() const {
    const cudaError_t err = cudaEventQuery(event_);
    if (err == cudaErrorNotReady) return false;
    HM_CUDA_CHECK(err);
    return true;
  }
  void Synchronize() const { HM_CUDA_CHECK(cudaEventSynchronize(event_)); }
  // Milliseconds between two timing events that have completed.
  static float ElapsedMs(const Event& start, const Event& stop) {
    float ms = 0;
    HM_CUDA_CHECK(cudaEventElapsedTime(&ms, start.event_, stop.event_));
    return ms;
  }
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

class Stream {
 public:
  // Non-blocking: does not implicitly synchronise with the legacy stream 0.
  Stream() { HM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~Stream() {
    if (stream_) cudaStreamDestroy(stream_);
  }
  Stream(Stream&& o) noexcept : stream_(std::exchange(o.stream_, nullptr)) {}
  Stream& operator=(Stream&& o) noexcept {
    std::swap(stream_, o.stream_);
    return *this;
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // Later work on this stream waits for `event` (recorded on any stream).
  void Wait(const Event& event) { HM_CUDA_CHECK(cudaStreamWaitEvent(stream_, event.get(), 0)); }
  void Synchronize() { HM_CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

// The backing for a CachingAllocator on the current device.
CachingAllocator::Backing CudaMallocBacking();

// n elements of T in device memory from `allocator`, returned to it on
// destruction. Contents are uninitialised. Resize discards the contents.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(CachingAllocator* allocator, size_t n) : allocator_(allocator) { Resize(n); }
  ~DeviceBuffer() { Release(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : allocator_(o.allocator_), data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(allocator_, o.allocator_);
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void Bind(CachingAllocator* allocator) { allocator_ = allocator; }
  void Free() { Release(); }  // back to the allocator; Resize allocates again
  void Resize(size_t n) {
    if (n == size_) return;
    Release();
    data_ = static_cast<T*>(allocator_->Allocate(n * sizeof(T)));
    size_ = n;
  }
  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  size_t bytes() const { return size_ * sizeof(T); }

 private:
  void Release() {
    if (data_) allocator_->Free(data_);
    data_ = nullptr;
    size_ = 0;
  }
  CachingAllocator* allocator_ = nullptr;
  T* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace hetermoe::kernels
