// NCCL on the CPU, for ranks that are threads of one process or separate
// processes alike: ranks meet over TCP on this machine (nccl_net.h), the way
// NCCL's bootstrap does, so a process that dies is a closed connection its
// peers notice, as a dead GPU host is to NCCL.
//
// Every operation is pending work on its stream (streams.h) that starts in
// stream order, as an NCCL kernel does:
//   send        copies the data out when it starts; up to the eager size it
//               completes at once (NCCL's buffers), above it only once the
//               peer's matching receive has started (rendezvous). So two
//               ranks that each send a large message before receiving, on
//               one stream and outside a group, deadlock here as on a GPU.
//   receive     when it starts, tells the sender (clear to send); completes
//               when the data is in; sizes that disagree fail the
//               communicator (ncclInvalidUsage, an async error).
//   all-reduce  sends its contribution to every rank when it starts;
//               completes when all have arrived, summed in rank order.
// A group (ncclGroupStart/End) starts its operations together, as NCCL
// fuses them into one kernel. A peer whose connection ends while an
// operation needs it makes the communicator fail with ncclRemoteError;
// the operation stays pending (as the GPU kernel would hang) until the
// communicator is aborted, which completes its pending work so streams drain.
// A progress thread polls outstanding operations, as a GPU runs them
// without the host.
//
// Non-blocking communicators (config.blocking = 0) connect in the background:
// init returns ncclInProgress and ncclCommGetAsyncError reports
// ncclInProgress until the bootstrap is done. ncclGetLastError names what
// failed. Environment:
//   HETERMOE_EMULATED_NCCL_EAGER_BYTES  largest send that completes without
//                                       its receive (default 65536, smaller
//                                       than NCCL's buffers so ordering bugs
//                                       show at test sizes)
//   HETERMOE_EMULATED_NCCL_ADDR         see nccl_net.h
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kernels/emulator/device_api.h"
#include "kernels/emulator/nccl_net.h"
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

size_t EagerBytes() {
  static const size_t eager = [] {
    const char* v = std::getenv("HETERMOE_EMULATED_NCCL_EAGER_BYTES");
    return (v && *v) ? static_cast<size_t>(std::strtoull(v, nullptr, 10)) : size_t{65536};
  }();
  return eager;
}

// What a communicator's operations share; they outlive its handle.
struct CommState {
  int rank = 0, nranks = 0;
  std::shared_ptr<net::Mesh> mesh;  // set once `ready`
  std::atomic<bool> ready{false}, aborted{false};
  std::atomic<ncclResult_t> async_error{ncclSuccess};
  std::mutex error_mu;
  std::string last_error;
  // Issue-order counters (the host thread that drives the communicator).
  std::vector<int64_t> sends_to;
  int64_t reductions = 0;

  void Fail(ncclResult_t r, const std::string& why) {
    ncclResult_t expected = ncclSuccess;
    if (async_error.compare_exchange_strong(expected, r)) {
      std::lock_guard<std::mutex> lock(error_mu);
      last_error = why;
      std::fprintf(stderr, "NCCL emulator WARN rank %d: %s\n", rank, why.c_str());
    }
  }
  bool PeerClosed(int peer) {
    std::lock_guard<std::mutex> lock(mesh->mu);
    return mesh->closed[peer];
  }
};

struct Comm {
  std::shared_ptr<CommState> state;
};
Comm* AsComm(ncclComm_t c) { return reinterpret_cast<Comm*>(c); }

// An operation of one communicator; done once complete or aborted.
class CommOp : public PendingOp {
 public:
  explicit CommOp(std::shared_ptr<CommState> c) : c_(std::move(c)) {}
  bool Poll() final {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return true;
    if (c_->aborted) return done_ = true;
    if (!c_->ready) return false;
    return done_ = Step();
  }

 protected:
  virtual bool Step() = 0;  // first call = the operation starts
  CommState& c() { return *c_; }

 private:
  std::mutex mu_;
  std::shared_ptr<CommState> c_;
  bool done_ = false;
};

class SendOp final : public CommOp {
 public:
  SendOp(std::shared_ptr<CommState> c, int peer, const void* buf, size_t bytes, int64_t index)
      : CommOp(std::move(c)), peer_(peer), buf_(buf), bytes_(bytes), index_(index) {}

 private:
  bool Step() override {
    if (!started_) {
      started_ = true;
      if (!c().mesh->Send(peer_, net::Frame::kData, index_, buf_, bytes_))
        c().Fail(ncclRemoteError, "send to rank " + std::to_string(peer_) + ": its connection is closed");
    }
    if (bytes_ <= EagerBytes()) return true;
    {
      std::lock_guard<std::mutex> lock(c().mesh->mu);
      if (c().mesh->clear_to_send[peer_] > index_) return true;
    }
    if (c().PeerClosed(peer_))
      c().Fail(ncclRemoteError, "send of " + std::to_string(bytes_) + " bytes to rank " + std::to_string(peer_) +
                                    ": the peer is gone before receiving it");
    return false;
  }
  int peer_;
  const void* buf_;
  size_t bytes_;
  int64_t index_;
  bool started_ = false;
};

class RecvOp final : public CommOp {
 public:
  RecvOp(std::shared_ptr<CommState> c, int peer, void* dst, size_t bytes)
      : CommOp(std::move(c)), peer_(peer), dst_(dst), bytes_(bytes) {}

 private:
  bool Step() override {
    if (!started_) {
      started_ = true;
      c().mesh->Send(peer_, net::Frame::kClearToSend, 0, nullptr, 0);  // a closed peer shows below
    }
    net::Mesh& m = *c().mesh;
    std::unique_lock<std::mutex> lock(m.mu);
    auto& queue = m.data[peer_];
    if (queue.empty()) {
      const bool closed = m.closed[peer_];
      lock.unlock();
      if (closed)
        c().Fail(ncclRemoteError, "receive of " + std::to_string(bytes_) + " bytes from rank " +
                                      std::to_string(peer_) + ": the peer's connection closed before it sent");
      return false;
    }
    std::vector<char> message = std::move(queue.front());
    queue.pop_front();
    lock.unlock();
    if (message.size() != bytes_)
      c().Fail(ncclInvalidUsage, "receive from rank " + std::to_string(peer_) + " expected " +
                                     std::to_string(bytes_) + " bytes, the send had " + std::to_string(message.size()));
    std::memcpy(dst_, message.data(), std::min(bytes_, message.size()));
    return true;
  }
  int peer_;
  void* dst_;
  size_t bytes_;
  bool started_ = false;
};

class AllReduceOp final : public CommOp {
 public:
  AllReduceOp(std::shared_ptr<CommState> c, int64_t seq, const void* send, void* dst, size_t count,
              ncclDataType_t type)
      : CommOp(std::move(c)), seq_(seq), send_(send), dst_(dst), count_(count), type_(type) {}

 private:
  bool Step() override {
    net::Mesh& m = *c().mesh;
    if (!started_) {
      started_ = true;
      for (int p = 0; p < m.size(); ++p) m.Send(p, net::Frame::kReduce, seq_, send_, count_ * TypeBytes(type_));
    }
    std::vector<std::vector<char>> parts;
    int gone = -1;  // a rank whose part is missing and whose connection closed
    {
      std::lock_guard<std::mutex> lock(m.mu);
      auto it = m.reductions.find(seq_);
      if (it != m.reductions.end() && it->second.arrived == m.size()) {
        parts = std::move(it->second.parts);
        m.reductions.erase(it);
      } else {
        for (int p = 0; p < m.size() && gone < 0; ++p)
          if (m.closed[p] && (it == m.reductions.end() || it->second.parts.size() <= static_cast<size_t>(p) ||
                              it->second.parts[p].empty()))
            gone = p;
      }
    }
    if (parts.empty()) {
      if (gone >= 0)
        c().Fail(ncclRemoteError, "all-reduce #" + std::to_string(seq_) + ": rank " + std::to_string(gone) +
                                      "'s connection closed before it contributed");
      return false;
    }
    const size_t bytes = count_ * TypeBytes(type_);
    for (int p = 0; p < m.size(); ++p)
      if (parts[p].size() != bytes) {
        c().Fail(ncclInvalidUsage, "all-reduce #" + std::to_string(seq_) + ": rank " + std::to_string(p) +
                                       " contributed " + std::to_string(parts[p].size()) + " bytes, this rank " +
                                       std::to_string(bytes));
        return true;
      }
    for (size_t i = 0; i < count_; ++i) {
      float sum = 0.0f;
      for (int p = 0; p < m.size(); ++p) sum += LoadAs(type_, parts[p].data(), i);
      StoreAs(type_, dst_, i, sum);
    }
    return true;
  }
  int64_t seq_;
  const void* send_;
  void* dst_;
  size_t count_;
  ncclDataType_t type_;
  bool started_ = false;
};

// Operations that start together (one ncclGroupStart/End).
class GroupOp final : public PendingOp {
 public:
  explicit GroupOp(std::vector<std::shared_ptr<PendingOp>> ops) : ops_(std::move(ops)) {}
  bool Poll() override {
    bool done = true;
    for (auto& op : ops_) done = op->Poll() && done;
    return done;
  }

 private:
  std::vector<std::shared_ptr<PendingOp>> ops_;
};

// Polls outstanding operations in the background.
class Progress {
 public:
  static Progress& Get() {
    static Progress* p = new Progress;  // never destroyed: its thread outlives static destructors
    return *p;
  }
  void Watch(std::shared_ptr<PendingOp> op) {
    std::lock_guard<std::mutex> lock(mu_);
    ops_.push_back(op);
    if (!running_) {
      running_ = true;
      std::thread([this] { Run(); }).detach();
    }
  }

 private:
  void Run() {
    for (;;) {
      std::vector<std::weak_ptr<PendingOp>> ops;
      {
        std::lock_guard<std::mutex> lock(mu_);
        ops.swap(ops_);
      }
      std::vector<std::weak_ptr<PendingOp>> left;
      for (auto& w : ops)
        if (auto op = w.lock())
          if (!op->Poll()) left.push_back(w);
      {
        std::lock_guard<std::mutex> lock(mu_);
        ops_.insert(ops_.end(), left.begin(), left.end());
      }
      std::this_thread::sleep_for(std::chrono::microseconds(left.empty() ? 2000 : 200));
    }
  }
  std::mutex mu_;
  std::vector<std::weak_ptr<PendingOp>> ops_;
  bool running_ = false;
};

// Calls between ncclGroupStart and ncclGroupEnd, started together at the end.
thread_local int group_depth = 0;
thread_local std::vector<std::pair<cudaStream_t, std::shared_ptr<PendingOp>>> grouped;

void Enqueue(cudaStream_t stream, std::shared_ptr<PendingOp> op) {
  Progress::Get().Watch(EnqueuePending(stream, std::move(op)));
}

ncclResult_t Issue(cudaStream_t stream, std::shared_ptr<PendingOp> op) {
  if (group_depth > 0) grouped.emplace_back(stream, std::move(op));
  else Enqueue(stream, std::move(op));
  return ncclSuccess;
}

ncclResult_t Bootstrap(const std::shared_ptr<CommState>& s, const std::string& root) {
  try {
    s->mesh = net::Mesh::Connect(root, s->rank, s->nranks, std::chrono::minutes(5));
    s->ready = true;
    return ncclSuccess;
  } catch (const std::exception& e) {
    s->Fail(ncclSystemError, e.what());
    return ncclSystemError;
  }
}

}  // namespace
}  // namespace hetermoe::emulator

using hetermoe::emulator::AsComm;
using hetermoe::emulator::Comm;
using hetermoe::emulator::CommState;

const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code (NCCL emulator)";
  }
}

const char* ncclGetLastError(ncclComm_t comm) {
  static thread_local std::string copy;
  if (comm == nullptr) return "";
  CommState& s = *AsComm(comm)->state;
  std::lock_guard<std::mutex> lock(s.error_mu);
  copy = s.last_error;
  return copy.c_str();
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::memset(id->internal, 0, sizeof(id->internal));
  try {
    const std::string root = hetermoe::emulator::net::StartRoot();
    std::snprintf(id->internal, sizeof(id->internal), "%s", root.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "NCCL emulator WARN %s\n", e.what());
    return ncclSystemError;
  }
  return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank, ncclConfig_t* config) {
  if (nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
  auto s = std::make_shared<CommState>();
  s->rank = rank;
  s->nranks = nranks;
  s->sends_to.assign(static_cast<size_t>(nranks), 0);
  const std::string root(id.internal, strnlen(id.internal, sizeof(id.internal)));
  *comm = reinterpret_cast<ncclComm_t>(new Comm{s});
  if (config != nullptr && config->blocking == 0) {
    std::thread([s, root] { hetermoe::emulator::Bootstrap(s, root); }).detach();
    return ncclInProgress;
  }
  return hetermoe::emulator::Bootstrap(s, root);
}
ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  return ncclCommInitRankConfig(comm, nranks, id, rank, nullptr);
}
ncclResult_t ncclCommFinalize(ncclComm_t comm) { return comm ? ncclSuccess : ncclInvalidArgument; }
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclInvalidArgument;
  CommState& s = *AsComm(comm)->state;
  if (s.ready) s.mesh->Close();
  delete AsComm(comm);
  return ncclSuccess;
}
ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  CommState& s = *AsComm(comm)->state;
  s.aborted = true;  // pending work completes, so its streams drain
  if (s.ready) s.mesh->Close();
  delete AsComm(comm);
  return ncclSuccess;
}
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* error) {
  if (comm == nullptr) return ncclInvalidArgument;
  CommState& s = *AsComm(comm)->state;
  *error = s.async_error;
  if (*error == ncclSuccess && !s.ready) *error = ncclInProgress;
  return ncclSuccess;
}

ncclResult_t ncclGroupStart() {
  ++hetermoe::emulator::group_depth;
  return ncclSuccess;
}
ncclResult_t ncclGroupEnd() {
  using hetermoe::emulator::grouped;
  if (hetermoe::emulator::group_depth == 0) return ncclInvalidUsage;
  if (--hetermoe::emulator::group_depth > 0) return ncclSuccess;
  auto calls = std::move(grouped);
  grouped.clear();
  // One fused operation per stream, started together.
  while (!calls.empty()) {
    const cudaStream_t stream = calls.front().first;
    std::vector<std::shared_ptr<hetermoe::emulator::PendingOp>> ops;
    std::erase_if(calls, [&](auto& call) {
      if (call.first != stream) return false;
      ops.push_back(std::move(call.second));
      return true;
    });
    hetermoe::emulator::Enqueue(stream, std::make_shared<hetermoe::emulator::GroupOp>(std::move(ops)));
  }
  return ncclSuccess;
}

ncclResult_t ncclSend(const void* buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  Comm* c = AsComm(comm);
  const size_t bytes = count * hetermoe::emulator::TypeBytes(type);
  if (c == nullptr || peer < 0 || peer >= c->state->nranks || (bytes == 0 && count > 0)) return ncclInvalidArgument;
  if (count > 0) hetermoe::emulator::CheckKernelPointer("ncclSend", 0, buf);
  const int64_t index = c->state->sends_to[peer]++;
  return hetermoe::emulator::Issue(stream,
                                   std::make_shared<hetermoe::emulator::SendOp>(c->state, peer, buf, bytes, index));
}

ncclResult_t ncclRecv(void* buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  Comm* c = AsComm(comm);
  const size_t bytes = count * hetermoe::emulator::TypeBytes(type);
  if (c == nullptr || peer < 0 || peer >= c->state->nranks || (bytes == 0 && count > 0)) return ncclInvalidArgument;
  if (count > 0) hetermoe::emulator::CheckKernelPointer("ncclRecv", 0, buf);
  return hetermoe::emulator::Issue(stream, std::make_shared<hetermoe::emulator::RecvOp>(c->state, peer, buf, bytes));
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
  const int64_t seq = c->state->reductions++;
  return hetermoe::emulator::Issue(
      stream, std::make_shared<hetermoe::emulator::AllReduceOp>(c->state, seq, send, recv, count, type));
}
