// Emulated device memory with a guard page after every allocation, so that a
// kernel reading or writing past the end of its buffer faults at once, as
// compute-sanitizer reports it on a GPU (where it would corrupt a neighbour
// or fault only sometimes), instead of silently touching the next heap
// block. The fault becomes one line naming the kernel, the block, the
// address and the allocation it ran past, and the process aborts.
//
// Each allocation is its own mapping: [slack][buffer rounded up to 256 B]
// [guard page]. The buffer stays 256-byte aligned (cudaMalloc's promise), so
// an overrun within the rounding (< 256 B past an odd size) is not caught;
// neither is one inside a block the caching allocator hands to a smaller
// request. Underruns land in the slack or the previous mapping.
#pragma once

#include <cstddef>

namespace hetermoe::emulator {

// nullptr when the system is out of memory. Contents are 0xFF bytes.
void* GuardedAllocate(size_t bytes);
// `bytes` as given to GuardedAllocate.
void GuardedFree(void* p, size_t bytes);
// Whether p is inside a live allocation (takes a lock: for the kernel cost
// report's byte counts, not for every run).
bool InGuardedAllocation(const void* p);
// The live allocation holding p: its first byte and size; false if none.
bool FindGuardedAllocation(const void* p, const char** begin, size_t* bytes);
// Installs the SIGSEGV handler (once per process) and an alternate signal
// stack for the calling thread (once per thread): call before running
// kernels on a thread.
void CatchOutOfBoundsOnThisThread();

}  // namespace hetermoe::emulator
