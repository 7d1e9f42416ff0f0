// Runs one thread block of an emulated kernel: one fiber per CUDA thread,
// switched at barriers and warp operations. Pure scheduling logic, no CUDA
// runtime state (that is runtime.cc); tested by kernels/emulator tests.
//
// Scheduling: every ready thread runs until it blocks (at __syncthreads or a
// warp operation) or returns. Then a warp whose 32 lanes all wait at a warp
// operation gets its results and runs on; when none is left, and every
// thread still alive waits at __syncthreads, the barrier opens. Anything else
// is a kernel bug a GPU would hang or misbehave on, and Run() throws
// EmulatorError naming the kernel, the block and the threads involved.
//
// With an order seed (SetOrderSeed, non-zero) the ready threads of each
// round run in a shuffled order drawn from the seed, the kernel and the
// block, as a GPU's warps interleave however they like: a thread that reads
// shared memory another writes without a barrier between them then reads it
// before the write in most blocks, instead of always after it as in thread
// order. The seed is part of every error message.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/emulator/device_api.h"
#include "kernels/emulator/global_races.h"
#include "kernels/emulator/race_hooks.h"
#include "kernels/emulator/shared_races.h"

namespace hetermoe::emulator {

// A kernel bug the emulator caught (divergent barrier, partial-warp shuffle,
// host pointer passed to a kernel, ...).
class EmulatorError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

class BlockRunner {
 public:
  BlockRunner();
  ~BlockRunner();
  BlockRunner(const BlockRunner&) = delete;
  BlockRunner& operator=(const BlockRunner&) = delete;

  // Runs `thread` once for every thread of block `block_idx`; returns when
  // all have returned. dynamic_shared: bytes of the extern __shared__ array.
  void Run(const char* kernel, dim3 grid, dim3 block, uint3 block_idx, size_t dynamic_shared,
           const std::function<void()>& thread);
  // 0: threads in order (the default of a new runner).
  void SetOrderSeed(uint64_t seed) { order_seed_ = seed; }
  // Measure each thread's run time (kernel_costs.h): the last block's
  // threads' times in nanoseconds, by linear thread index.
  void SetTiming(bool on) { timing_ = on; }
  const std::vector<int32_t>& thread_ns() const { return thread_ns_; }
  // Count the device-memory bytes the block's threads touch (kernel_costs.h):
  // the last block's total.
  void SetByteCount(bool on) { count_bytes_ = on; }
  uint64_t global_bytes() const { return global_bytes_; }
  uint64_t order_seed() const { return order_seed_; }
  // Check shared memory for races (off in a new runner).
  void SetRaceCheck(bool on) { race_check_ = on; }
  // Check device memory for races with `detector` (null: off), which the
  // caller started for the launch (GlobalRaceDetector::StartLaunch) and
  // gives every block of it. Needs SetRaceCheck(true).
  void SetGlobalRaceCheck(GlobalRaceDetector* detector);
  // The running kernel and block (for error reports).
  const char* kernel_name() const { return kernel_.c_str(); }
  uint3 block_idx() const { return block_idx_; }

  // Called from inside a running thread (via device_api.h).
  const ThreadCoordinates& current() const;
  void SyncThreads();
  uint64_t WarpExchange(WarpOp op, unsigned mask, uint64_t bits, int operand);
  void* dynamic_shared() const { return shared_.data(); }
  // An access by the running thread (from the instrumentation): checked
  // when it falls in shared memory, counted when it falls in device memory
  // (SetByteCount). `code`: the accessing instruction.
  void Touch(const void* address, size_t bytes, bool write, const void* code);

  // The runner of this host thread's running kernel (nullptr outside one).
  static BlockRunner* Active();

 private:
  struct Lane;
  void Schedule();
  bool ReleaseWarps();
  bool ReleaseBarrier();
  [[noreturn]] void FailWarp(unsigned first_lane, unsigned end_lane) const;
  [[noreturn]] void Fail(const std::string& what) const;
  std::string DescribeRace(const SharedRaceDetector::Race& race, const void* code) const;
  std::string DescribeGlobalRace(const GlobalRaceDetector::Race& race, const void* code) const;
  // Whether [address, +bytes) is device memory (cached per launch: the
  // allocations hit and the 4 KiB pages that hold none).
  bool InDeviceMemory(uintptr_t address);

  std::string kernel_;
  uint3 block_idx_{};
  uint64_t order_seed_ = 0;
  bool timing_ = false;
  std::vector<int32_t> thread_ns_;
  bool count_bytes_ = false;
  uint64_t global_bytes_ = 0;
  std::vector<unsigned> order_;  // this round's order of the threads
  std::vector<std::unique_ptr<Lane>> lanes_;
  Lane* running_ = nullptr;
  mutable std::vector<unsigned char> shared_;
  bool race_check_ = false;
  SharedRaceDetector races_;
  bool static_shared_searched_ = false;
  uintptr_t static_shared_ = 0;  // this host thread's block of the module's thread_locals
  size_t static_shared_bytes_ = 0;
  std::vector<StaticShared::Symbol> static_symbols_;
  GlobalRaceDetector* global_races_ = nullptr;
  dim3 grid_{};
  std::vector<std::pair<uintptr_t, uintptr_t>> device_ranges_;  // [begin, end) of allocations seen this launch
  std::vector<uintptr_t> host_pages_;                             // pages seen this launch that hold none
  std::string race_;  // the first race of the running block
  struct StackPool;
  std::unique_ptr<StackPool> stacks_;
};

}  // namespace hetermoe::emulator
