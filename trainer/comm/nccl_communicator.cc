#include "trainer/comm/nccl_communicator.h"

#include <cstring>

#include "common/error.h"
#include "kernels/cuda_check.h"
#include "trainer/comm/deadline.h"

namespace hetermoe::comm {
namespace {

ncclDataType_t NcclType(NcclDtype dtype) {
  switch (dtype) {
    case NcclDtype::kFloat32: return ncclFloat32;
    case NcclDtype::kBfloat16: return ncclBfloat16;
    case NcclDtype::kFloat16: return ncclFloat16;
  }
  return ncclFloat32;
}

const char* DtypeName(NcclDtype dtype) {
  switch (dtype) {
    case NcclDtype::kFloat32: return "fp32";
    case NcclDtype::kBfloat16: return "bf16";
    case NcclDtype::kFloat16: return "fp16";
  }
  return "?";
}

}  // namespace

// Failures a restart can cure: a peer process or host gone, the network.
static bool PeerLost(ncclResult_t r) { return r == ncclRemoteError || r == ncclSystemError; }

size_t NcclDtypeBytes(NcclDtype dtype) { return dtype == NcclDtype::kFloat32 ? 4 : 2; }

NcclId NewNcclId() {
  ncclUniqueId uid;
  const ncclResult_t r = ncclGetUniqueId(&uid);
  if (r != ncclSuccess)
    throw Error("NCCL error on " + kernels::HostName() + ": ncclGetUniqueId: " + ncclGetErrorString(r));
  NcclId id;
  std::memcpy(id.data(), uid.internal, id.size());
  return id;
}

NcclCommunicator::NcclCommunicator(const NcclId& id, int rank, int size, std::chrono::milliseconds timeout)
    : rank_(rank), size_(size), timeout_(timeout) {
  if (size < 1 || rank < 0 || rank >= size)
    throw Error("NCCL communicator: rank " + std::to_string(rank) + " is not in [0, " + std::to_string(size) + ")");
  HM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  HM_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
  HM_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  ncclUniqueId uid;
  std::memcpy(uid.internal, id.data(), id.size());
  // Non-blocking: calls return ncclInProgress instead of blocking the host,
  // so a missing peer turns into a timeout rather than a hang.
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  last_op_ = "initialisation with " + std::to_string(size) + " ranks";
  FinishGroup(ncclCommInitRankConfig(&comm_, size, uid, rank, &config), last_op_);
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_ != nullptr && !broken_) {
    // Flush outstanding work; a peer that died meanwhile must not hang us.
    ncclResult_t r = ncclCommFinalize(comm_);
    bool clean = r == ncclSuccess || r == ncclInProgress;
    if (clean) {
      const WaitOutcome w = WaitWithDeadline(
          [&] {
            ncclResult_t st = ncclSuccess;
            if (ncclCommGetAsyncError(comm_, &st) != ncclSuccess) return PollState::kFailed;
            if (st == ncclInProgress) return PollState::kPending;
            return st == ncclSuccess ? PollState::kDone : PollState::kFailed;
          },
          timeout_);
      clean = w.kind == WaitOutcome::Kind::kDone;
    }
    if (clean) ncclCommDestroy(comm_);
    else ncclCommAbort(comm_);
  }
  if (done_) cudaEventDestroy(done_);
  if (ready_) cudaEventDestroy(ready_);
  if (stream_) cudaStreamDestroy(stream_);
}

void NcclCommunicator::Abort(const std::string& why, bool retryable) {
  broken_ = true;
  std::string detail;
  if (comm_ != nullptr) {
    const char* last = ncclGetLastError(comm_);
    if (last != nullptr && *last != '\0') detail = " (" + std::string(last) + ")";
    ncclCommAbort(comm_);
  }
  comm_ = nullptr;
  const std::string message = "NCCL error on " + kernels::HostName() + " (rank " + std::to_string(rank_) + " of " +
                              std::to_string(size_) + "): " + why + detail + "; the communicator was aborted";
  if (retryable) throw RetryableError(message);
  throw Error(message);
}

void NcclCommunicator::Check(ncclResult_t result, const std::string& what) {
  if (result == ncclSuccess || result == ncclInProgress) return;
  Abort(what + ": " + ncclGetErrorString(result));
}

void NcclCommunicator::FinishGroup(ncclResult_t result, const std::string& what) {
  if (result == ncclSuccess) return;
  if (result != ncclInProgress) Abort(what + ": " + ncclGetErrorString(result));
  ncclResult_t failure = ncclSuccess;
  const WaitOutcome w = WaitWithDeadline(
      [&] {
        ncclResult_t st = ncclSuccess;
        const ncclResult_t q = ncclCommGetAsyncError(comm_, &st);
        if (q != ncclSuccess) {
          failure = q;
          return PollState::kFailed;
        }
        if (st == ncclInProgress) return PollState::kPending;
        failure = st;
        return st == ncclSuccess ? PollState::kDone : PollState::kFailed;
      },
      timeout_);
  if (w.kind == WaitOutcome::Kind::kFailed) Abort(what + ": " + ncclGetErrorString(failure), PeerLost(failure));
  if (w.kind == WaitOutcome::Kind::kTimedOut)
    Abort(what + ": not issued after " + std::to_string(timeout_.count()) + " ms (a peer is missing?)", true);
}

void NcclCommunicator::After(cudaStream_t producer) {
  HM_CUDA_CHECK(cudaEventRecord(ready_, producer));
  HM_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
}

void NcclCommunicator::Before(cudaStream_t consumer) {
  HM_CUDA_CHECK(cudaEventRecord(done_, stream_));
  HM_CUDA_CHECK(cudaStreamWaitEvent(consumer, done_, 0));
}

void NcclCommunicator::Send(const void* data, size_t count, NcclDtype dtype, int peer) {
  last_op_ = "send of " + std::to_string(count) + " " + DtypeName(dtype) + " to rank " + std::to_string(peer);
  if (broken_) Abort(last_op_ + " on a broken communicator");
  Issued();
  FinishGroup(ncclSend(data, count, NcclType(dtype), peer, comm_, stream_), last_op_);
}

void NcclCommunicator::Recv(void* data, size_t count, NcclDtype dtype, int peer) {
  last_op_ = "receive of " + std::to_string(count) + " " + DtypeName(dtype) + " from rank " + std::to_string(peer);
  if (broken_) Abort(last_op_ + " on a broken communicator");
  Issued();
  FinishGroup(ncclRecv(data, count, NcclType(dtype), peer, comm_, stream_), last_op_);
}

void NcclCommunicator::SendRecv(const void* send, size_t send_count, int to, void* recv, size_t recv_count,
                                int from, NcclDtype dtype) {
  Group({{const_cast<void*>(send), send_count, to}}, {{recv, recv_count, from}}, dtype);
}

void NcclCommunicator::Group(const std::vector<Transfer>& sends, const std::vector<Transfer>& recvs,
                             NcclDtype dtype) {
  last_op_ = "group (" + std::string(DtypeName(dtype)) + "):";
  for (const Transfer& t : sends) last_op_ += " " + std::to_string(t.count) + " to rank " + std::to_string(t.peer) + ",";
  for (const Transfer& t : recvs)
    last_op_ += " " + std::to_string(t.count) + " from rank " + std::to_string(t.peer) + ",";
  last_op_.pop_back();
  if (broken_) Abort(last_op_ + " on a broken communicator");
  Issued();
  ncclResult_t first_error = ncclSuccess;
  auto note = [&](ncclResult_t x) {
    if (first_error == ncclSuccess && x != ncclSuccess && x != ncclInProgress) first_error = x;
  };
  note(ncclGroupStart());
  for (const Transfer& t : sends)
    if (t.count > 0) note(ncclSend(t.data, t.count, NcclType(dtype), t.peer, comm_, stream_));
  for (const Transfer& t : recvs)
    if (t.count > 0) note(ncclRecv(t.data, t.count, NcclType(dtype), t.peer, comm_, stream_));
  const ncclResult_t end = ncclGroupEnd();  // always close the group
  Check(first_error, last_op_);
  FinishGroup(end, last_op_);
}

void NcclCommunicator::AllToAllV(const void* send, const std::vector<size_t>& send_counts, void* recv,
                                 const std::vector<size_t>& recv_counts, NcclDtype dtype) {
  if (send_counts.size() != static_cast<size_t>(size_) || recv_counts.size() != static_cast<size_t>(size_))
    throw Error("NCCL all-to-all: need one send and one receive count per rank (" + std::to_string(size_) + ")");
  last_op_ = "all-to-all (" + std::string(DtypeName(dtype)) + ") over " + std::to_string(size_) + " ranks";
  if (broken_) Abort(last_op_ + " on a broken communicator");
  Issued();
  const size_t elem = NcclDtypeBytes(dtype);
  const auto* s = static_cast<const char*>(send);
  auto* r = static_cast<char*>(recv);
  ncclResult_t first_error = ncclSuccess;
  auto note = [&](ncclResult_t x) {
    if (first_error == ncclSuccess && x != ncclSuccess && x != ncclInProgress) first_error = x;
  };
  note(ncclGroupStart());
  size_t send_off = 0, recv_off = 0;
  for (int p = 0; p < size_; ++p) {
    if (send_counts[p] > 0) note(ncclSend(s + send_off * elem, send_counts[p], NcclType(dtype), p, comm_, stream_));
    if (recv_counts[p] > 0) note(ncclRecv(r + recv_off * elem, recv_counts[p], NcclType(dtype), p, comm_, stream_));
    send_off += send_counts[p];
    recv_off += recv_counts[p];
  }
  const ncclResult_t end = ncclGroupEnd();  // always close the group
  Check(first_error, last_op_);
  FinishGroup(end, last_op_);
}

void NcclCommunicator::AllReduceSum(const void* send, void* recv, size_t count, NcclDtype dtype) {
  last_op_ = "all-reduce of " + std::to_string(count) + " " + DtypeName(dtype);
  if (broken_) Abort(last_op_ + " on a broken communicator");
  Issued();
  FinishGroup(ncclAllReduce(send, recv, count, NcclType(dtype), ncclSum, comm_, stream_), last_op_);
}

void NcclCommunicator::Issued() {
  outstanding_.push_back(last_op_);
  if (outstanding_.size() > 64) outstanding_.erase(outstanding_.begin(), outstanding_.begin() + 32);
}

void NcclCommunicator::Wait() {
  if (broken_) Abort("wait on a broken communicator");
  HM_CUDA_CHECK(cudaEventRecord(done_, stream_));
  Wait(done_);
  outstanding_.clear();
}

void NcclCommunicator::Wait(cudaEvent_t event) {
  if (broken_) Abort("wait on a broken communicator");
  std::string failure;
  ncclResult_t nccl_failure = ncclSuccess;
  const WaitOutcome w = WaitWithDeadline(
      [&] {
        const cudaError_t q = cudaEventQuery(event);
        if (q == cudaSuccess) return PollState::kDone;
        if (q != cudaErrorNotReady) {
          failure = cudaGetErrorString(q);
          return PollState::kFailed;
        }
        ncclResult_t st = ncclSuccess;
        if (ncclCommGetAsyncError(comm_, &st) != ncclSuccess || (st != ncclSuccess && st != ncclInProgress)) {
          failure = ncclGetErrorString(st);
          nccl_failure = st;
          return PollState::kFailed;
        }
        return PollState::kPending;
      },
      timeout_);
  // The latest operations issued since the last Wait(): one of them (or one
  // before them) did not finish.
  std::string ops;
  const size_t from = outstanding_.size() > 4 ? outstanding_.size() - 4 : 0;
  if (from > 0) ops = std::to_string(from) + " earlier operations; ";
  for (size_t i = from; i < outstanding_.size(); ++i) ops += (i > from ? "; " : "") + outstanding_[i];
  if (ops.empty()) ops = last_op_;
  if (w.kind == WaitOutcome::Kind::kFailed) Abort(ops + ": " + failure, PeerLost(nccl_failure));
  if (w.kind == WaitOutcome::Kind::kTimedOut)
    Abort(ops + ": no completion after " + std::to_string(timeout_.count()) + " ms (a peer is dead or stuck)", true);
}

}  // namespace hetermoe::comm
