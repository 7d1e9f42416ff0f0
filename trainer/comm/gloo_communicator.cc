// The Gloo implementation of Communicator and World.
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/common/error.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/transport/tcp/device.h>

#include <csignal>
#include <cstring>
#include <map>

#include "common/error.h"
#include "trainer/comm/communicator.h"
#include "trainer/comm/tcp_store.h"

namespace hetermoe::comm {
namespace {

// A self-addressed message: Isend copies into the mailbox, Irecv takes from it
// (the sender always posts first in the engine's schedules).
struct Mailbox {
  std::map<uint32_t, std::vector<std::vector<char>>> queued;
};

class CompletedRequest final : public Request {
 public:
  void Wait() override {}
};

class LocalRecv final : public Request {
 public:
  LocalRecv(Mailbox* box, void* data, size_t bytes, uint32_t tag, int rank)
      : box_(box), data_(data), bytes_(bytes), tag_(tag), rank_(rank) {}
  void Wait() override {
    auto& q = box_->queued[tag_];
    if (q.empty())
      throw Error("rank " + std::to_string(rank_) + ": receive from itself (tag " +
                  std::to_string(tag_) + ") with nothing sent: schedule bug");
    if (q.front().size() > bytes_)
      throw Error("rank " + std::to_string(rank_) + ": self-message of " +
                  std::to_string(q.front().size()) + " bytes overflows a " + std::to_string(bytes_) +
                  "-byte receive");
    std::memcpy(data_, q.front().data(), q.front().size());
    q.erase(q.begin());
  }

 private:
  Mailbox* box_;
  void* data_;
  size_t bytes_;
  uint32_t tag_;
  int rank_;
};

class GlooRequest final : public Request {
 public:
  GlooRequest(std::unique_ptr<gloo::transport::UnboundBuffer> buf, bool send, int peer_global,
              int self_global, std::chrono::milliseconds timeout)
      : buf_(std::move(buf)), send_(send), peer_(peer_global), self_(self_global), timeout_(timeout) {}
  ~GlooRequest() override {
    if (!done_) {
      // Never leave a posted operation behind a freed buffer.
      try {
        Wait();
      } catch (...) {
      }
    }
  }
  void Wait() override {
    if (done_) return;
    done_ = true;
    try {
      const bool ok = send_ ? buf_->waitSend(timeout_) : buf_->waitRecv(timeout_);
      if (!ok) throw gloo::IoException("aborted");
    } catch (const gloo::Exception& e) {
      throw RetryableError("rank " + std::to_string(self_) + ": " + (send_ ? "send to" : "receive from") +
                  " rank " + std::to_string(peer_) + " failed (peer dead or silent for " +
                  std::to_string(timeout_.count() / 1000) + " s): " + e.what());
    }
  }

 private:
  std::unique_ptr<gloo::transport::UnboundBuffer> buf_;
  bool send_;
  int peer_, self_;
  std::chrono::milliseconds timeout_;
  bool done_ = false;
};

class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(std::shared_ptr<gloo::Context> ctx, std::vector<int> members, int self_global,
                   std::chrono::milliseconds timeout)
      : ctx_(std::move(ctx)), members_(std::move(members)), self_(self_global), timeout_(timeout) {}

  int rank() const override { return ctx_->rank; }
  int size() const override { return ctx_->size; }
  int GlobalRank(int member) const override { return members_.at(member); }

  std::unique_ptr<Request> Isend(const void* data, size_t bytes, int peer, uint32_t tag) override {
    if (peer == rank()) {
      const char* p = static_cast<const char*>(data);
      mailbox_.queued[tag].emplace_back(p, p + bytes);
      return std::make_unique<CompletedRequest>();
    }
    auto buf = ctx_->createUnboundBuffer(const_cast<void*>(data), bytes);
    Guard([&] { buf->send(peer, tag); }, ("send to rank " + std::to_string(members_[peer])).c_str());
    return std::make_unique<GlooRequest>(std::move(buf), true, members_[peer], self_, timeout_);
  }

  std::unique_ptr<Request> Irecv(void* data, size_t bytes, int peer, uint32_t tag) override {
    if (peer == rank()) return std::make_unique<LocalRecv>(&mailbox_, data, bytes, tag, self_);
    auto buf = ctx_->createUnboundBuffer(data, bytes);
    Guard([&] { buf->recv(peer, tag); }, ("receive from rank " + std::to_string(members_[peer])).c_str());
    return std::make_unique<GlooRequest>(std::move(buf), false, members_[peer], self_, timeout_);
  }

  void AllReduceSum(float* data, size_t count) override { AllReduce(data, count); }
  void AllReduceSum(double* data, size_t count) override { AllReduce(data, count); }

  void Barrier() override {
    if (size() == 1) return;
    Guard([&] {
      gloo::BarrierOptions opts(ctx_);
      opts.setTimeout(timeout_);
      gloo::barrier(opts);
    }, "barrier");
  }

 private:
  template <typename T>
  void AllReduce(T* data, size_t count) {
    if (size() == 1 || count == 0) return;
    Guard([&] {
      gloo::AllreduceOptions opts(ctx_);
      opts.setOutput(data, count);
      opts.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<T>));
      opts.setTimeout(timeout_);
      gloo::allreduce(opts);
    }, "all-reduce");
  }

  template <typename Fn>
  void Guard(Fn fn, const std::string& what) {
    try {
      fn();
    } catch (const gloo::Exception& e) {
      std::string peers;
      for (int m : members_) peers += (peers.empty() ? "" : ",") + std::to_string(m);
      throw RetryableError("rank " + std::to_string(self_) + ": " + what + " over ranks {" + peers +
                  "} failed (a peer died or stalled): " + e.what());
    }
  }

  std::shared_ptr<gloo::Context> ctx_;
  std::vector<int> members_;
  int self_;
  std::chrono::milliseconds timeout_;
  Mailbox mailbox_;
};

}  // namespace

void Communicator::AllToAllV(const float* send, const std::vector<size_t>& send_counts, float* recv,
                             const std::vector<size_t>& recv_counts, uint32_t tag) {
  std::vector<std::unique_ptr<Request>> pending;
  size_t so = 0, ro = 0;
  for (int p = 0; p < size(); ++p) {
    if (send_counts[p] > 0) pending.push_back(Isend(send + so, send_counts[p] * sizeof(float), p, tag));
    so += send_counts[p];
  }
  for (int p = 0; p < size(); ++p) {
    if (recv_counts[p] > 0) pending.push_back(Irecv(recv + ro, recv_counts[p] * sizeof(float), p, tag));
    ro += recv_counts[p];
  }
  for (auto& r : pending) r->Wait();
}

struct World::Impl {
  RendezvousOptions options;
  std::unique_ptr<TcpStoreServer> server;
  std::unique_ptr<TcpStore> store;
  std::shared_ptr<gloo::transport::Device> device;
};

World::World(const RendezvousOptions& o) : impl_(std::make_unique<Impl>()) {
  // Gloo's TCP pairs write with writev, which raises SIGPIPE when the peer
  // has died; ignored, the write fails with EPIPE and the dead peer becomes
  // the named, retryable error every rank should exit with (our own store
  // sends with MSG_NOSIGNAL already).
  std::signal(SIGPIPE, SIG_IGN);
  impl_->options = o;
  if (o.world_size < 1) throw Error("WORLD_SIZE must be >= 1 (got " + std::to_string(o.world_size) + ")");
  if (o.rank < 0 || o.rank >= o.world_size)
    throw Error("RANK " + std::to_string(o.rank) + " is outside [0, WORLD_SIZE=" +
                std::to_string(o.world_size) + ")");
  // Rank 0 serves the store on its own address (its pod IP), which its
  // MASTER_ADDR name may not resolve to yet.
  if (o.rank == 0) {
    const std::string& host = o.listen_addr.empty() ? o.master_addr : o.listen_addr;
    impl_->server = std::make_unique<TcpStoreServer>(host == "localhost" ? "127.0.0.1" : host, o.master_port);
  }
  impl_->store = std::make_unique<TcpStore>(o.master_addr, o.master_port, o.timeout);
  // Every rank states the world size it was given; a mismatch is named.
  const std::string mine = std::to_string(o.world_size);
  impl_->store->set("world_size/" + std::to_string(o.rank), std::vector<char>(mine.begin(), mine.end()));
  for (int r = 0; r < o.world_size; ++r) {
    const auto v = impl_->store->get("world_size/" + std::to_string(r));
    const std::string theirs(v.begin(), v.end());
    if (theirs != mine)
      throw Error("rank " + std::to_string(r) + " was started with WORLD_SIZE=" + theirs +
                  " but rank " + std::to_string(o.rank) + " with WORLD_SIZE=" +
                  std::to_string(o.world_size));
  }
  gloo::transport::tcp::attr attr;
  attr.hostname = o.listen_addr;
  impl_->device = gloo::transport::tcp::CreateDevice(attr);
}

World::~World() = default;

int World::rank() const { return impl_->options.rank; }
int World::size() const { return impl_->options.world_size; }

std::unique_ptr<Communicator> World::Group(const std::string& name, const std::vector<int>& members) {
  int me = -1;
  for (size_t i = 0; i < members.size(); ++i)
    if (members[i] == rank()) me = static_cast<int>(i);
  if (me < 0) throw Error("communicator \"" + name + "\": rank " + std::to_string(rank()) + " is not a member");
  auto ctx = std::make_shared<gloo::rendezvous::Context>(me, static_cast<int>(members.size()));
  ctx->setTimeout(impl_->options.timeout);
  if (members.size() > 1) {
    gloo::rendezvous::PrefixStore prefixed("group/" + name, *impl_->store);
    try {
      ctx->connectFullMesh(prefixed, impl_->device);
    } catch (const gloo::Exception& e) {
      throw RetryableError("rank " + std::to_string(rank()) + ": cannot connect communicator \"" + name +
                  "\": " + e.what());
    }
  }
  return std::make_unique<GlooCommunicator>(ctx, members, rank(), impl_->options.timeout);
}

}  // namespace hetermoe::comm
