// Emulated streams that can hold work which completes later: NCCL
// operations waiting on a peer (nccl.cc, between threads or processes). Everything else an emulated
// stream runs completes when it is issued, but first waits for the stream's
// pending operations, so stream order holds: a kernel launched after a
// receive sees the received data, as on a GPU. Pending operations run in
// stream order too: one starts (its first Poll) only after everything
// before it on its stream, including the work of events it waits for, has
// completed, as a GPU runs one NCCL kernel after the other on a stream.
#pragma once

#include <cuda_runtime.h>

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
// stream would, it waits forever for a peer that never sends).
void DrainStream(cudaStream_t s);

}  // namespace hetermoe::emulator
