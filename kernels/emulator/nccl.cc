// NCCL on the CPU, for ranks that are threads of one process (the
// NcclCommunicator tests run one thread per GPU, as NCCL's own tests do).
//
// Communicators meet by their unique id. Sends are buffered: the data is
// copied out when the send is issued (in stream order) and queued for the
// peer; a receive is pending work on its stream (streams.h) that completes
// when the matching send (same pair of ranks, same order) has arrived, and
// fails the communicator (ncclInvalidUsage, as an async error) when the
// sizes disagree. An all-reduce completes when every rank has contributed,
// summing in rank order. Groups (ncclGroupStart/End) collect calls and issue
// them at the end. Aborting a communicator completes its pending work so its
// stream drains. Non-blocking communicators return ncclSuccess at once (NCCL
// allows it), so the callers' ncclInProgress paths are not exercised here.
#include <nccl.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kernels/emulator/device_api.h"
#include "kernels/emulator/streams.h"

namespace hetermoe::emulator {
namespace {

size_t TypeBytes(ncclDataType_t t) {
  switch (t) {
    case ncclFloat32: return 4;
    case ncclFloat16:
    case ncclBfloat16: return 2;
    default: return 0;
  }
}

float LoadAs(ncclDataType_t t, const void* p, size_t i) {
  switch (t) {
    case ncclFloat32: return static_cast<const float*>(p)[i];
    case ncclFloat16: return __half2float(static_cast<const __half*>(p)[i]);
    case ncclBfloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return 0.0f;
  }
}

void StoreAs(ncclDataType_t t, void* p, size_t i, float v) {
  switch (t) {
    case ncclFloat32: static_cast<float*>(p)[i] = v; break;
    case ncclFloat16: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
    case ncclBfloat16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    default: break;
  }
}

// One communicator "clique": the ranks that share a unique id.
struct Clique {
  std::mutex mu;
  int nranks = 0;
  std::map<std::pair<int, int>, std::deque<std::vector<char>>> mailbox;  // (from, to) -> messages
  struct Reduction {
    std::vector<std::vector<char>> contributions;  // per rank
    int arrived = 0, collected = 0;
  };
  std::map<long long, Reduction> reductions;  // by sequence number
};

std::mutex cliques_mu;
std::map<std::string, std::shared_ptr<Clique>> cliques;

struct Comm {
  std::shared_ptr<Clique> clique;
  int rank = 0;
  long long reductions = 0;  // this rank's all-reduce sequence number
  std::atomic<ncclResult_t> async_error{ncclSuccess};
  std::atomic<bool> aborted{false};
};

class PendingRecv : public PendingOp {
 public:
  PendingRecv(Comm* comm, int peer, void* dst, size_t bytes) : comm_(comm), peer_(peer), dst_(dst), bytes_(bytes) {}
  bool Poll() override {
    if (done_) return true;
    if (comm_->aborted) return done_ = true;
    Clique& c = *comm_->clique;
    std::lock_guard<std::mutex> lock(c.mu);
    auto& queue = c.mailbox[{peer_, comm_->rank}];
    if (queue.empty()) return false;
    if (queue.front().size() != bytes_) comm_->async_error = ncclInvalidUsage;  // sizes disagree
    std::memcpy(dst_, queue.front().data(), std::min(bytes_, queue.front().size()));
    queue.pop_front();
    return done_ = true;
  }

 private:
  Comm* comm_;
  int peer_;
  void* dst_;
  size_t bytes_;
  bool done_ = false;
};

class PendingAllReduce : public PendingOp {
 public:
  PendingAllReduce(Comm* comm, long long seq, void* dst, size_t count, ncclDataType_t type)
      : comm_(comm), seq_(seq), dst_(dst), count_(count), type_(type) {}
  bool Poll() override {
    if (done_) return true;
    if (comm_->aborted) return done_ = true;
    Clique& c = *comm_->clique;
    std::lock_guard<std::mutex> lock(c.mu);
    Clique::Reduction& red = c.reductions[seq_];
    if (red.arrived < c.nranks) return false;
    for (size_t i = 0; i < count_; ++i) {
      float sum = 0.0f;
      for (int r = 0; r < c.nranks; ++r) sum += LoadAs(type_, red.contributions[r].data(), i);
      StoreAs(type_, dst_, i, sum);
    }
    if (++red.collected == c.nranks) c.reductions.erase(seq_);
    return done_ = true;
  }

 private:
  Comm* comm_;
  long long seq_;
  void* dst_;
  size_t count_;
  ncclDataType_t type_;
  bool done_ = false;
};

// Calls between ncclGroupStart and ncclGroupEnd, issued at the end.
thread_local int group_depth = 0;
thread_local std::vector<std::function<void()>> grouped;

ncclResult_t Issue(std::function<void()> call) {
  if (group_depth > 0) grouped.push_back(std::move(call));
  else call();
  return ncclSuccess;
}

Comm* AsComm(ncclComm_t c) { return reinterpret_cast<Comm*>(c); }

}  // namespace
}  // namespace hetermoe::emulator

using hetermoe::emulator::AsComm;
using hetermoe::emulator::Comm;

const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage (NCCL emulator: send and receive sizes differ?)";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code (NCCL emulator)";
  }
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  static std::atomic<long long> next{1};
  std::memset(id->internal, 0, sizeof(id->internal));
  std::snprintf(id->internal, sizeof(id->internal), "hetermoe-emulated-nccl-%lld", next++);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank, ncclConfig_t*) {
  if (nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
  const std::string key(id.internal, strnlen(id.internal, sizeof(id.internal)));
  std::shared_ptr<hetermoe::emulator::Clique> clique;
  {
    std::lock_guard<std::mutex> lock(hetermoe::emulator::cliques_mu);
    auto& slot = hetermoe::emulator::cliques[key];
    if (!slot) {
      slot = std::make_shared<hetermoe::emulator::Clique>();
      slot->nranks = nranks;
    }
    if (slot->nranks != nranks) return ncclInvalidUsage;
    clique = slot;
  }
  auto* c = new Comm;
  c->clique = clique;
  c->rank = rank;
  *comm = reinterpret_cast<ncclComm_t>(c);
  return ncclSuccess;
}
ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  return ncclCommInitRankConfig(comm, nranks, id, rank, nullptr);
}
ncclResult_t ncclCommFinalize(ncclComm_t comm) { return comm ? ncclSuccess : ncclInvalidArgument; }
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  delete AsComm(comm);
  return ncclSuccess;
}
ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  // Pending work still holds the Comm: mark it so its streams drain; it is
  // left allocated (an aborted communicator's memory is not worth a race).
  AsComm(comm)->aborted = true;
  return ncclSuccess;
}
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* error) {
  if (comm == nullptr) return ncclInvalidArgument;
  *error = AsComm(comm)->async_error;
  return ncclSuccess;
}

ncclResult_t ncclGroupStart() {
  ++hetermoe::emulator::group_depth;
  return ncclSuccess;
}
ncclResult_t ncclGroupEnd() {
  if (hetermoe::emulator::group_depth == 0) return ncclInvalidUsage;
  if (--hetermoe::emulator::group_depth > 0) return ncclSuccess;
  auto calls = std::move(hetermoe::emulator::grouped);
  hetermoe::emulator::grouped.clear();
  for (auto& call : calls) call();
  return ncclSuccess;
}

ncclResult_t ncclSend(const void* buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  Comm* c = AsComm(comm);
  const size_t bytes = count * hetermoe::emulator::TypeBytes(type);
  if (c == nullptr || peer < 0 || peer >= c->clique->nranks || (bytes == 0 && count > 0)) return ncclInvalidArgument;
  if (count > 0) hetermoe::emulator::CheckKernelPointer("ncclSend", 0, buf);
  return hetermoe::emulator::Issue([=] {
    hetermoe::emulator::DrainStream(stream);  // the data is ready in stream order
    std::vector<char> message(static_cast<const char*>(buf), static_cast<const char*>(buf) + bytes);
    std::lock_guard<std::mutex> lock(c->clique->mu);
    c->clique->mailbox[{c->rank, peer}].push_back(std::move(message));
  });
}

ncclResult_t ncclRecv(void* buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  Comm* c = AsComm(comm);
  const size_t bytes = count * hetermoe::emulator::TypeBytes(type);
  if (c == nullptr || peer < 0 || peer >= c->clique->nranks || (bytes == 0 && count > 0)) return ncclInvalidArgument;
  if (count > 0) hetermoe::emulator::CheckKernelPointer("ncclRecv", 0, buf);
  return hetermoe::emulator::Issue([=] {
    hetermoe::emulator::EnqueuePending(stream, std::make_shared<hetermoe::emulator::PendingRecv>(c, peer, buf, bytes));
  });
}

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
  Comm* c = AsComm(comm);
  const size_t bytes = count * hetermoe::emulator::TypeBytes(type);
  if (c == nullptr || op != ncclSum || (bytes == 0 && count > 0)) return ncclInvalidArgument;
  if (count > 0) {
    hetermoe::emulator::CheckKernelPointer("ncclAllReduce", 0, send);
    hetermoe::emulator::CheckKernelPointer("ncclAllReduce", 1, recv);
  }
  return hetermoe::emulator::Issue([=] {
    hetermoe::emulator::DrainStream(stream);
    const long long seq = c->reductions++;
    {
      std::lock_guard<std::mutex> lock(c->clique->mu);
      auto& red = c->clique->reductions[seq];
      red.contributions.resize(c->clique->nranks);
      red.contributions[c->rank].assign(static_cast<const char*>(send), static_cast<const char*>(send) + bytes);
      ++red.arrived;
    }
    hetermoe::emulator::EnqueuePending(
        stream, std::make_shared<hetermoe::emulator::PendingAllReduce>(c, seq, recv, count, type));
  });
}
