// What each emulated thread block cost, for the kernel cost report
// (bench/kernels/kernel_cost.cc): per block, its kernel and the run time of
// each of its threads. The emulator runs every CUDA thread as a fiber
// on one CPU core, so a thread's run time is its serial work: a kernel whose
// longest thread takes longer as the tokens grow has a serial chain that
// grows with them (a loop over N in one thread), which on a GPU is a kernel
// that does not get faster with more blocks.
//
// Off by default (measuring costs two clock reads per fiber switch). Blocks
// are logged in the order they ran, which repeats exactly when the same
// launches repeat (the block and thread order depend only on the seed and the
// kernel), so a caller can take each thread's minimum over repeats and filter
// what lands in one run (an interrupt, the hypervisor taking the CPU away).
#pragma once

#include <cstdint>
#include <vector>

namespace hetermoe::emulator {

struct BlockCost {
  const char* kernel;  // as launched (template arguments not spelled out)
  bool first_block;    // the first block of its launch
  std::vector<int32_t> thread_ns;  // each thread's run time, by linear index
  // Bytes of device memory the block's threads read and wrote (0 unless
  // counted: count_bytes). Seen through the kernels' instrumentation
  // (race_hooks.h), so only kernels built with it count; shared memory,
  // locals and kernel arguments do not.
  uint64_t global_bytes = 0;
};

// count_bytes: also count each block's device-memory bytes. Each access then
// looks its address up under a lock, which slows the threads: measure times
// in a run without it.
void EnableKernelCosts(bool on, bool count_bytes = false);
bool KernelCostsEnabled();
bool KernelByteCountsEnabled();
// The blocks run since the last call (or since enabling), in order.
std::vector<BlockCost> TakeBlockCosts();

// Called by the launch after each block.
void RecordBlockCost(const BlockCost& cost);

}  // namespace hetermoe::emulator
