// The CUDA runtime API on the CPU: device memory is host memory tracked in
// a registry, streams and events are handles whose work runs later, when
// something waits for it (streams.h), and a kernel launch runs its grid
// block by block (block_runner.h).
//
// The registry turns the memory bugs a GPU would fault on into errors:
// copies whose direction does not match their pointers, a range that runs
// past its allocation, a host pointer handed to a kernel, freeing twice; a
// guard page after every allocation (guarded_memory.h) turns a kernel's
// access past the end of its buffer into an abort naming the kernel.
//
// The emulated device is one GPU named "HeterMoE CUDA emulator (CPU)" with
// sm_80's limits. Environment:
//   HETERMOE_EMULATED_SM=75       report another compute capability (e.g.
//                                 to run the fp16 + loss-scaling path)
//   HETERMOE_EMULATED_DEVICES=0   report no device (the no-GPU paths)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "kernels/emulator/block_runner.h"
#include "kernels/emulator/device_api.h"
#include "kernels/emulator/guarded_memory.h"
#include "kernels/emulator/host_timeline.h"
#include "kernels/emulator/kernel_costs.h"
#include "kernels/emulator/register_model.h"
#include "kernels/emulator/streams.h"

namespace hetermoe::emulator {
namespace {

constexpr size_t kMaxDynamicShared = 48 * 1024;  // without cudaFuncSetAttribute opt-in

// An operation in stream order: it runs after `before` (what its stream
// had pending when it was enqueued) completes.
class InOrder final : public PendingOp {
 public:
  InOrder(std::vector<std::shared_ptr<InOrder>> before, std::shared_ptr<PendingOp> op)
      : before_(std::move(before)), op_(std::move(op)) {}
  bool Poll() override {
    if (done_) return true;
    std::lock_guard<std::mutex> lock(mu_);  // nested locks go from newer to older ops: no cycle
    if (done_) return true;
    for (const auto& b : before_)
      if (!b->Poll()) return false;
    before_.clear();
    if (!op_->Poll()) return false;
    op_.reset();
    return done_ = true;
  }
  bool done() const { return done_; }

 private:
  std::mutex mu_;
  std::vector<std::shared_ptr<InOrder>> before_;
  std::shared_ptr<PendingOp> op_;
  std::atomic<bool> done_{false};
};

using PendingList = std::vector<std::shared_ptr<InOrder>>;

struct StreamState {
  PendingList pending;
};

struct Registry {
  std::mutex mu;
  std::map<const char*, size_t> allocations;  // base -> bytes
  std::set<const void*> streams, events;
  std::map<const char*, size_t> pinned;  // page-locked host memory (cudaMallocHost): base -> bytes
  StreamState legacy;  // the default stream (nullptr, cudaStreamLegacy, cudaStreamPerThread)
};
Registry& registry() {
  static Registry* r = new Registry;  // never destroyed: frees may come from static destructors
  return *r;
}

struct Event {
  std::chrono::steady_clock::time_point at{};
  bool recorded = false;
  PendingList waits;  // what its stream still had pending when it was recorded
};

// Call with registry().mu held; the stream must be valid.
StreamState& StateOf(cudaStream_t s) {
  if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) return registry().legacy;
  return *reinterpret_cast<StreamState*>(s);
}

// Polls every op of `ops` (outside the registry lock: polling may take the
// NCCL emulator's locks); true when all are complete.
bool PollAll(const PendingList& ops) {
  bool done = true;
  for (const auto& op : ops) done = op->Poll() && done;
  return done;
}

void WaitAll(const PendingList& ops) {
  while (!PollAll(ops)) std::this_thread::sleep_for(std::chrono::microseconds(50));
}

// Deferred work's errors, thrown by the host's next synchronising call.
std::mutex deferred_error_mu;
std::exception_ptr deferred_error;

// A kernel, copy or GEMM on a stream (Submit): runs once, when polled.
class DeferredWork final : public PendingOp {
 public:
  explicit DeferredWork(std::function<void()> work) : work_(std::move(work)) {}
  bool Poll() override {  // InOrder polls it under its lock, and never again once complete
    if (!work_) return true;
    const std::function<void()> work = std::move(work_);
    work_ = nullptr;
    try {
      work();
    } catch (...) {
      std::lock_guard<std::mutex> lock(deferred_error_mu);
      if (!deferred_error) deferred_error = std::current_exception();
    }
    return true;
  }

 private:
  std::function<void()> work_;
};

thread_local cudaError_t last_error = cudaSuccess;

cudaError_t Fail(cudaError_t err) {
  last_error = err;
  return err;
}

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return (v && *v) ? std::atoi(v) : fallback;
}

// Whether [p, p + bytes) lies inside one block of `blocks` (base -> bytes),
// a registry map (taken under its lock).
bool InOneBlock(const std::map<const char*, size_t>& blocks, const void* p, size_t bytes) {
  std::lock_guard<std::mutex> lock(registry().mu);
  const char* c = static_cast<const char*>(p);
  auto it = blocks.upper_bound(c);
  if (it == blocks.begin()) return false;
  --it;
  return c >= it->first && c + bytes <= it->first + it->second;
}

// Whether [p, p + bytes) lies inside one device allocation.
bool InDeviceMemory(const void* p, size_t bytes) { return InOneBlock(registry().allocations, p, bytes); }

[[noreturn]] void Bug(const std::string& what) { throw EmulatorError("CUDA emulator: " + what); }

void CheckSide(const void* p, size_t bytes, bool device, const char* call, const char* which) {
  if (device && !InDeviceMemory(p, bytes))
    Bug(std::string(call) + ": " + which + " (" + std::to_string(bytes) +
        " bytes) is not inside one device allocation");
  if (!device && InDeviceMemory(p, 1))
    Bug(std::string(call) + ": " + which + " is device memory, but the copy kind says host");
}

void CheckCopy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, const char* call) {
  if (bytes == 0) return;
  switch (kind) {
    case cudaMemcpyHostToDevice:
      CheckSide(dst, bytes, true, call, "destination");
      CheckSide(src, bytes, false, call, "source");
      break;
    case cudaMemcpyDeviceToHost:
      CheckSide(dst, bytes, false, call, "destination");
      CheckSide(src, bytes, true, call, "source");
      break;
    case cudaMemcpyDeviceToDevice:
      CheckSide(dst, bytes, true, call, "destination");
      CheckSide(src, bytes, true, call, "source");
      break;
    default: break;  // HostToHost or Default: any pointers
  }
}

bool ValidStream(cudaStream_t s) {
  if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) return true;
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  return r.streams.count(s) > 0;
}

}  // namespace

void CheckKernelPointer(const char* kernel, int index, const void* p) {
  if (p == nullptr || InDeviceMemory(p, 0)) return;
  // One past the end of an allocation is a valid (empty) range.
  if (InDeviceMemory(static_cast<const char*>(p) - 1, 1)) return;
  Bug(std::string("kernel ") + kernel + ": pointer argument " + std::to_string(index) +
      " is not device memory (a host pointer faults on a GPU)");
}

std::shared_ptr<PendingOp> EnqueuePending(cudaStream_t s, std::shared_ptr<PendingOp> op) {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  PendingList& pending = StateOf(s).pending;
  std::erase_if(pending, [](const std::shared_ptr<InOrder>& p) { return p->done(); });
  auto ordered = std::make_shared<InOrder>(pending, std::move(op));
  pending.push_back(ordered);
  return ordered;
}

void DrainStream(cudaStream_t s) {
  PendingList ops;
  {
    auto& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    // Another host thread may have destroyed it since the caller looked.
    const bool legacy = s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread;
    if (!legacy && !r.streams.count(s)) return;
    ops.swap(StateOf(s).pending);
  }
  WaitAll(ops);
}

void Submit(cudaStream_t s, std::function<void()> work) {
  // HETERMOE_EMULATED_DEFERRED=0: run now, after the stream's pending work.
  static const bool deferred = EnvInt("HETERMOE_EMULATED_DEFERRED", 1) != 0;
  EnqueuePending(s, std::make_shared<DeferredWork>(std::move(work)));
  if (!deferred) DrainStream(s);
}

void RethrowDeferredError() {
  std::exception_ptr error;
  {
    std::lock_guard<std::mutex> lock(deferred_error_mu);
    error = std::exchange(deferred_error, nullptr);
  }
  if (error) std::rethrow_exception(error);
}

namespace {
// Runs a launch's blocks, on whichever host thread runs the stream's work.
void RunBlocks(const LaunchConfig& c, const std::function<void()>& thread) {
  CatchOutOfBoundsOnThisThread();
  thread_local BlockRunner runner;
  // HETERMOE_EMULATED_SEED: blocks, and each block's threads, run in an order
  // shuffled by this seed (default 1; 0 runs them in index order), so code
  // that relies on an order a GPU does not promise shows (block_runner.h).
  static const uint64_t seed = static_cast<uint64_t>(EnvInt("HETERMOE_EMULATED_SEED", 1));
  runner.SetOrderSeed(seed);
  // HETERMOE_EMULATED_RACES: check shared memory for races (default 1; the
  // kernels must be built with the instrumentation, race_hooks.h).
  static const bool races = EnvInt("HETERMOE_EMULATED_RACES", 1) != 0;
  runner.SetRaceCheck(races);
  // ... and device memory, across the launch's blocks (global_races.h).
  thread_local GlobalRaceDetector global_races;
  if (races) global_races.StartLaunch();
  runner.SetGlobalRaceCheck(races ? &global_races : nullptr);
  const bool timing = KernelCostsEnabled();
  runner.SetTiming(timing);
  runner.SetByteCount(KernelByteCountsEnabled());
  bool first_block = true;
  auto run_block = [&](uint3 b) {
    runner.Run(c.kernel, c.grid, c.block, b, c.shared_bytes, thread);
    if (timing)
      RecordBlockCost({c.kernel, std::exchange(first_block, false), runner.thread_ns(), runner.global_bytes()});
  };
  const uint64_t blocks = 1ull * c.grid.x * c.grid.y * c.grid.z;
  if (seed == 0 || blocks > (1u << 20)) {
    for (unsigned z = 0; z < c.grid.z; ++z)
      for (unsigned y = 0; y < c.grid.y; ++y)
        for (unsigned x = 0; x < c.grid.x; ++x) run_block({x, y, z});
    return;
  }
  std::vector<uint3> order;
  order.reserve(blocks);
  for (unsigned z = 0; z < c.grid.z; ++z)
    for (unsigned y = 0; y < c.grid.y; ++y)
      for (unsigned x = 0; x < c.grid.x; ++x) order.push_back({x, y, z});
  std::mt19937_64 rng(seed ^ std::hash<std::string_view>{}(c.kernel));
  std::shuffle(order.begin(), order.end(), rng);
  for (const uint3& b : order) run_block(b);
}
}  // namespace

void RunGrid(const LaunchConfig& c, const std::function<void()>& thread) {
  const unsigned long long threads = 1ull * c.block.x * c.block.y * c.block.z;
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || threads == 0 || threads > 1024 || c.block.z > 64 ||
      c.grid.y > 65535 || c.grid.z > 65535 || c.grid.x > 0x7fffffffu) {
    Fail(cudaErrorInvalidConfiguration);
    return;
  }
  if (c.shared_bytes > kMaxDynamicShared) {
    Fail(cudaErrorInvalidValue);
    return;
  }
  if (!ValidStream(c.stream)) {
    Fail(cudaErrorInvalidResourceHandle);
    return;
  }
  if (const int regs = KernelRegisters(c.kernel); regs > 0 && !RegistersFit(regs, threads)) {
    std::fprintf(stderr,
                 "CUDA emulator: kernel %s: %llu threads of %d registers need more than an SM's 65536 "
                 "(cudaErrorLaunchOutOfResources; a __launch_bounds__ would make ptxas fit them)\n",
                 c.kernel, threads, regs);
    Fail(cudaErrorLaunchOutOfResources);
    return;
  }
  NoteHostTimeline("launch", c.kernel);
  Submit(c.stream, [c, thread] { RunBlocks(c, thread); });
}

// --- the host's timeline (host_timeline.h) ---
namespace {
std::atomic<bool> timeline_on{false};
std::mutex timeline_mutex;
std::vector<std::string>& Timeline() {
  static std::vector<std::string> entries;
  return entries;
}
}  // namespace

void RecordHostTimeline(bool on) {
  std::lock_guard<std::mutex> lock(timeline_mutex);
  Timeline().clear();
  timeline_on = on;
}
std::vector<std::string> TakeHostTimeline() {
  std::lock_guard<std::mutex> lock(timeline_mutex);
  return std::exchange(Timeline(), {});
}
void NoteHostTimeline(const char* what, const char* name) {
  if (!timeline_on) return;
  std::lock_guard<std::mutex> lock(timeline_mutex);
  Timeline().push_back(std::string(what) + " " + name);
}

// --- kernel costs (kernel_costs.h) ---
namespace {
std::atomic<bool> costs_on{false}, bytes_on{false};
std::mutex costs_mutex;
std::vector<BlockCost>& Blocks() {
  static std::vector<BlockCost> blocks;
  return blocks;
}
}  // namespace

void EnableKernelCosts(bool on, bool count_bytes) {
  std::lock_guard<std::mutex> lock(costs_mutex);
  costs_on = on;
  bytes_on = on && count_bytes;
  Blocks().clear();
}
bool KernelCostsEnabled() { return costs_on; }
bool KernelByteCountsEnabled() { return bytes_on; }
std::vector<BlockCost> TakeBlockCosts() {
  std::lock_guard<std::mutex> lock(costs_mutex);
  return std::exchange(Blocks(), {});
}
void RecordBlockCost(const BlockCost& cost) {
  std::lock_guard<std::mutex> lock(costs_mutex);
  Blocks().push_back(cost);
}

}  // namespace hetermoe::emulator

using hetermoe::emulator::CheckCopy;
using hetermoe::emulator::EnvInt;
using hetermoe::emulator::GuardedAllocate;
using hetermoe::emulator::GuardedFree;
using hetermoe::emulator::Event;
using hetermoe::emulator::Fail;
using hetermoe::emulator::last_error;
using hetermoe::emulator::Registry;
using hetermoe::emulator::registry;
using hetermoe::emulator::DrainStream;
using hetermoe::emulator::PendingList;
using hetermoe::emulator::StateOf;
using hetermoe::emulator::StreamState;
using hetermoe::emulator::ValidStream;
using hetermoe::emulator::WaitAll;

// --- errors ---
cudaError_t cudaGetLastError() {
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return last_error; }

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    default: return "cudaErrorUnknown";
  }
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected (HETERMOE_EMULATED_DEVICES=0)";
    case cudaErrorNotReady: return "device not ready";
    default: return "unknown error (CUDA emulator)";
  }
}

// --- devices ---
cudaError_t cudaGetDeviceCount(int* count) {
  *count = EnvInt("HETERMOE_EMULATED_DEVICES", 1);
  if (*count == 0) return Fail(cudaErrorNoDevice);
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return cudaErrorNoDevice;
  return (device >= 0 && device < n) ? cudaSuccess : Fail(cudaErrorInvalidDevice);
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return cudaErrorNoDevice;
  if (device < 0 || device >= n) return Fail(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof(*p));
  std::snprintf(p->name, sizeof(p->name), "HeterMoE CUDA emulator (CPU)");
  const int sm = EnvInt("HETERMOE_EMULATED_SM", 80);
  p->major = sm / 10;
  p->minor = sm % 10;
  p->totalGlobalMem = size_t{16} << 30;
  p->sharedMemPerBlock = hetermoe::emulator::kMaxDynamicShared;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = 1024;
  p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 0x7fffffff;
  p->maxGridSize[1] = 65535;
  p->maxGridSize[2] = 65535;
  p->multiProcessorCount = 1;
  return cudaSuccess;
}
namespace {
// Every stream's work, the streams drained in a shuffled order (streams.h).
void DrainAllStreams() {
  std::vector<cudaStream_t> streams = {nullptr};
  {
    auto& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    for (const void* s : r.streams) streams.push_back(static_cast<cudaStream_t>(const_cast<void*>(s)));
  }
  static const uint64_t seed = static_cast<uint64_t>(EnvInt("HETERMOE_EMULATED_SEED", 1));
  static std::atomic<uint64_t> round{0};
  if (seed != 0) {  // 0: in order, as the threads of a block
    std::mt19937_64 rng(seed + round++);
    std::shuffle(streams.begin(), streams.end(), rng);
  }
  for (cudaStream_t s : streams) DrainStream(s);
}
}  // namespace

cudaError_t cudaDeviceSynchronize() {
  hetermoe::emulator::NoteHostTimeline("wait", "cudaDeviceSynchronize");
  DrainAllStreams();
  hetermoe::emulator::RethrowDeferredError();
  return cudaSuccess;
}

// --- memory ---
cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = nullptr;
  if (bytes == 0) return cudaSuccess;
  void* mem = GuardedAllocate(bytes);  // 256-byte aligned, a guard page after it, 0xFF bytes
  if (mem == nullptr) return Fail(cudaErrorMemoryAllocation);
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.allocations[static_cast<const char*>(mem)] = bytes;
  *p = mem;
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (p == nullptr) return cudaSuccess;
  size_t bytes = 0;
  {
    auto& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.allocations.find(static_cast<const char*>(p));
    if (it == r.allocations.end()) return Fail(cudaErrorInvalidValue);  // not a base pointer, or freed
    bytes = it->second;
  }
  DrainAllStreams();  // cudaFree waits for the device, so no pending work still uses the block
  {
    auto& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    r.allocations.erase(static_cast<const char*>(p));
  }
  GuardedFree(p, bytes);
  return cudaSuccess;
}
// Page-locked host memory: what makes a device-to-host cudaMemcpyAsync
// truly asynchronous (below).
cudaError_t cudaMallocHost(void** p, size_t bytes) {
  *p = std::malloc(bytes == 0 ? 1 : bytes);
  if (*p == nullptr) return Fail(cudaErrorMemoryAllocation);
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.pinned[static_cast<const char*>(*p)] = bytes;
  return cudaSuccess;
}
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned int) { return cudaMallocHost(p, bytes); }
cudaError_t cudaFreeHost(void* p) {
  if (p == nullptr) return cudaSuccess;
  DrainAllStreams();  // as cudaFree: no pending copy still uses it
  {
    auto& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    if (r.pinned.erase(static_cast<const char*>(p)) == 0) return Fail(cudaErrorInvalidValue);
  }
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
  *free_bytes = size_t{16} << 30;
  *total = size_t{16} << 30;
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  CheckCopy(dst, src, bytes, kind, "cudaMemcpy");
  hetermoe::emulator::NoteHostTimeline("wait", "cudaMemcpy");
  DrainStream(nullptr);  // the legacy default stream (the project's streams are non-blocking)
  hetermoe::emulator::RethrowDeferredError();
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
namespace {
// Whether [p, p + bytes) lies in page-locked host memory.
bool InPinnedMemory(const void* p, size_t bytes) {
  return hetermoe::emulator::InOneBlock(hetermoe::emulator::registry().pinned, p, bytes);
}

}  // namespace

// As CUDA documents: a copy into pageable host memory is synchronous (the
// call returns once the copy is done); one from pageable host memory is
// staged at the call (later changes to the source do not reach it);
// anything else runs with the stream's work, reading its source then. Until
// a copy into page-locked memory has run, the destination reads as NaN, so a
// host read that forgot the synchronisation sees NaN instead of the right
// value by luck.
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s) {
  if (!ValidStream(s)) return Fail(cudaErrorInvalidResourceHandle);
  CheckCopy(dst, src, bytes, kind, "cudaMemcpyAsync");
  if (bytes == 0) return cudaSuccess;
  const bool dst_device = hetermoe::emulator::InDeviceMemory(dst, bytes);
  const bool src_device = hetermoe::emulator::InDeviceMemory(src, bytes);
  if (!dst_device && !InPinnedMemory(dst, bytes)) {
    hetermoe::emulator::NoteHostTimeline("wait", "cudaMemcpyAsync to pageable host memory");
    DrainStream(s);
    hetermoe::emulator::RethrowDeferredError();
    std::memmove(dst, src, bytes);
    return cudaSuccess;
  }
  if (!dst_device) std::memset(dst, 0xFF, bytes);
  if (!src_device && !InPinnedMemory(src, bytes)) {
    auto staged = std::make_shared<std::vector<char>>(static_cast<const char*>(src),
                                                      static_cast<const char*>(src) + bytes);
    hetermoe::emulator::Submit(s, [dst, staged] { std::memcpy(dst, staged->data(), staged->size()); });
  } else {
    hetermoe::emulator::Submit(s, [dst, src, bytes] { std::memmove(dst, src, bytes); });
  }
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s) {
  if (!ValidStream(s)) return Fail(cudaErrorInvalidResourceHandle);
  if (bytes == 0) return cudaSuccess;
  if (!hetermoe::emulator::InDeviceMemory(p, bytes))
    hetermoe::emulator::Bug("cudaMemsetAsync: " + std::to_string(bytes) + " bytes not inside one device allocation");
  hetermoe::emulator::Submit(s, [p, value, bytes] { std::memset(p, value, bytes); });
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) { return cudaMemsetAsync(p, value, bytes, nullptr); }

// --- streams and events ---
namespace {
// Streams and events are heap objects whose addresses are the handles; the
// registry knows the live ones, so a stale or foreign handle is an error.
template <typename Object, typename Handle>
cudaError_t NewHandle(Handle* out, std::set<const void*> Registry::*live) {
  *out = reinterpret_cast<Handle>(new Object);
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  (r.*live).insert(*out);
  return cudaSuccess;
}
template <typename Object, typename Handle>
cudaError_t DeleteHandle(Handle h, std::set<const void*> Registry::*live) {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  if ((r.*live).erase(h) == 0) return Fail(cudaErrorInvalidResourceHandle);
  delete reinterpret_cast<Object*>(h);  // a stream's pending work is dropped with it, as on a GPU
  return cudaSuccess;
}
}  // namespace

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int) {
  return NewHandle<StreamState>(s, &Registry::streams);
}
cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  // The stream's pending work still completes, as on a GPU.
  if (s != nullptr && ValidStream(s)) DrainStream(s);
  return DeleteHandle<StreamState>(s, &Registry::streams);
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (!ValidStream(s)) return Fail(cudaErrorInvalidResourceHandle);
  hetermoe::emulator::NoteHostTimeline("wait", "cudaStreamSynchronize");
  DrainStream(s);
  hetermoe::emulator::RethrowDeferredError();
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int) {
  if (!ValidStream(s)) return Fail(cudaErrorInvalidResourceHandle);
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  if (!r.events.count(e)) return Fail(cudaErrorInvalidResourceHandle);
  // Later work on s waits for what the event waits for.
  const PendingList& waits = reinterpret_cast<Event*>(e)->waits;
  PendingList& pending = StateOf(s).pending;
  pending.insert(pending.end(), waits.begin(), waits.end());
  return cudaSuccess;
}

namespace {
Event* FindEvent(cudaEvent_t e) {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  return r.events.count(e) ? reinterpret_cast<Event*>(e) : nullptr;
}
}  // namespace

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int) { return NewHandle<Event>(e, &Registry::events); }
cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, cudaEventDefault); }
cudaError_t cudaEventDestroy(cudaEvent_t e) { return DeleteHandle<Event>(e, &Registry::events); }
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  Event* ev = FindEvent(e);
  if (ev == nullptr || !ValidStream(s)) return Fail(cudaErrorInvalidResourceHandle);
  ev->at = std::chrono::steady_clock::now();
  ev->recorded = true;
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  ev->waits = StateOf(s).pending;
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t e) {
  Event* ev = FindEvent(e);
  if (ev == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  const bool done = hetermoe::emulator::PollAll(ev->waits);
  hetermoe::emulator::RethrowDeferredError();
  return done ? cudaSuccess : cudaErrorNotReady;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  Event* ev = FindEvent(e);
  if (ev == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  hetermoe::emulator::NoteHostTimeline("wait", "cudaEventSynchronize");
  WaitAll(ev->waits);
  hetermoe::emulator::RethrowDeferredError();
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  Event* a = FindEvent(start);
  Event* b = FindEvent(end);
  if (a == nullptr || b == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  if (!a->recorded || !b->recorded) return Fail(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
  return cudaSuccess;
}
