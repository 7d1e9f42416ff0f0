// Emulated streams hold work that runs later, as a GPU's do: kernels,
// copies, memsets and cuBLAS GEMMs run only when something needs them done
// (a synchronisation, an event query or wait, a synchronous copy, or later
// work that depends on them), and NCCL operations wait for their peers
// (nccl.cc, between threads or processes). Work on a stream runs in stream
// order: one operation starts (its first Poll) only after everything before
// it on its stream, including the work of events it waits for, has
// completed; work on different streams has no order unless an event gives
// it one, and cudaDeviceSynchronize drains the streams in a shuffled order
// (HETERMOE_EMULATED_SEED). So a consumer that forgot to wait for another
// stream reads what was there before, instead of the producer's result by
// luck. HETERMOE_EMULATED_DEFERRED=0 runs every operation when it is issued
// (after its stream's pending work), for debugging.
//
// An emulator error inside deferred work (a kernel bug, a bad GEMM operand)
// is thrown by the host's next synchronising call, as a GPU reports a
// kernel's fault at the next synchronisation.
#pragma once

#include <cuda_runtime.h>

#include <functional>
#include <memory>

namespace hetermoe::emulator {

class PendingOp {
 public:
  virtual ~PendingOp() = default;
  // Makes what progress it can; true once complete. Called from any thread.
  virtual bool Poll() = 0;
};

// Appends `op` to stream s (nullptr: the legacy default stream). The
// returned op is `op` in stream order: polling it polls `op` only once
// everything before it on s is complete (poll it to make progress).
std::shared_ptr<PendingOp> EnqueuePending(cudaStream_t s, std::shared_ptr<PendingOp> op);
// Blocks until every pending operation on s is complete (like the GPU
// stream would, it waits forever for a peer that never sends). Does not
// throw: RethrowDeferredError does.
void DrainStream(cudaStream_t s);
// Puts `work` on stream s (nullptr: the legacy default stream), to run as
// described above; returns at once.
void Submit(cudaStream_t s, std::function<void()> work);
// Throws the first error deferred work has raised since the last call.
void RethrowDeferredError();

}  // namespace hetermoe::emulator
