// NcclCommunicator: GPU-to-GPU communication for the distributed engine on
// CUDA machines (the Gloo communicator, communicator.h, is the CPU one).
//
// Every operation is enqueued on the communicator's own stream and works on
// device memory. Ordering with compute is expressed with events, never host
// synchronisation: After(producer) makes the next operations wait for the
// work enqueued so far on the producer stream; Before(consumer) makes the
// consumer stream wait for the operations enqueued so far.
//
//   Send / Recv    point-to-point; a matching pair must be posted on both
//                  sides (NCCL matches them by order per peer). Each is its
//                  own kernel on the stream: a large send does not complete
//                  until the peer's receive runs, so two ranks that each
//                  Send and then Recv deadlock. Use SendRecv for that.
//   SendRecv       a send and a receive started together (one NCCL group).
//   Group          any sends and receives started together.
//   AllToAllV      unequal splits, as grouped sends and receives (one NCCL
//                  group, so the pairwise exchanges cannot deadlock): the
//                  token dispatch and combine of the MoE layer, with the
//                  counts per expert rank from the DispatchPlan.
//   AllReduceSum   in place or out of place (gradients of replicated weights).
//
// Failure: the communicator is created non-blocking, so a dead or hung peer
// cannot block the host forever. Wait() polls the completion event and
// ncclCommGetAsyncError; on an NCCL error or when `timeout` passes it aborts
// the communicator (ncclCommAbort) and throws hetermoe::Error naming this
// host and rank, the operation and the peer(s). After an error the
// communicator is unusable; the process is expected to exit and be
// restarted from a checkpoint (a lost or silent peer is a RetryableError).
//
// Data formats: fp32, and the 16-bit compute formats (bf16 where every GPU
// of the exchange is sm_80+, fp16 otherwise: kernels/precision.h).
//
// Not thread-safe: one thread drives a communicator.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

namespace hetermoe::comm {

enum class NcclDtype { kFloat32, kBfloat16, kFloat16 };
size_t NcclDtypeBytes(NcclDtype dtype);

// The 128-byte identity of a communicator: made once (rank 0) and handed to
// every member through a side channel (the rendezvous TCP store).
using NcclId = std::array<char, NCCL_UNIQUE_ID_BYTES>;
NcclId NewNcclId();

class NcclCommunicator {
 public:
  // Collective over the `size` members. Uses the current CUDA device.
  NcclCommunicator(const NcclId& id, int rank, int size, std::chrono::milliseconds timeout);
  ~NcclCommunicator();
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  cudaStream_t stream() const { return stream_; }

  void After(cudaStream_t producer);
  void Before(cudaStream_t consumer);

  void Send(const void* data, size_t count, NcclDtype dtype, int peer);
  void Recv(void* data, size_t count, NcclDtype dtype, int peer);
  void SendRecv(const void* send, size_t send_count, int to, void* recv, size_t recv_count, int from,
                NcclDtype dtype);
  // Any sends and receives started together (one NCCL group); zero counts
  // are skipped.
  struct Transfer {
    void* data;
    size_t count;
    int peer;
  };
  void Group(const std::vector<Transfer>& sends, const std::vector<Transfer>& recvs, NcclDtype dtype);
  // send_counts[p] elements (consecutive in `send`, in member order) go to
  // member p; recv_counts[p] elements from p land consecutively in `recv`.
  // Zero counts are skipped; the counts must agree pairwise across members.
  void AllToAllV(const void* send, const std::vector<size_t>& send_counts, void* recv,
                 const std::vector<size_t>& recv_counts, NcclDtype dtype);
  void AllReduceSum(const void* send, void* recv, size_t count, NcclDtype dtype);

  // Blocks until everything enqueued so far has completed (see Failure).
  void Wait();
  // Blocks until what the stream held when `event` was recorded on it has
  // completed (see Failure).
  void Wait(cudaEvent_t event);

 private:
  void Issued();  // records last_op_ as outstanding
  void Check(ncclResult_t result, const std::string& what);
  void FinishGroup(ncclResult_t result, const std::string& what);
  // Throws RetryableError when `retryable` (a peer lost or silent: a
  // restart from the checkpoint can cure it), else Error.
  [[noreturn]] void Abort(const std::string& why, bool retryable = false);

  int rank_ = 0, size_ = 0;
  std::chrono::milliseconds timeout_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr, done_ = nullptr;
  std::string last_op_ = "nothing";
  std::vector<std::string> outstanding_;  // operations issued since the last Wait
  bool broken_ = false;
};

}  // namespace hetermoe::comm
