// The emulated NCCL's network: how the ranks of a communicator find each
// other and move bytes, between threads or processes alike, over TCP on one
// machine (NCCL's own bootstrap works the same way: the unique id holds the
// address of a root socket that the process calling ncclGetUniqueId
// listens on; every rank registers there and learns every other's address).
//
// A communicator's Mesh is one socket per peer with a reader thread each
// that files what arrives in the Mesh's inbox (under `mu`): point-to-point
// data per sender, clear-to-send notices per sender, all-reduce
// contributions per sequence number. A peer whose connection ends is marked
// `closed`; what that means (an error or not) is the operation's call.
//
// Environment: HETERMOE_EMULATED_NCCL_ADDR (default 127.0.0.1), the address
// the root and the ranks listen on.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace hetermoe::emulator::net {

// Opens a bootstrap root for one communicator (any number of ranks; the
// first registration says how many) and returns its address, "ip:port".
// A thread serves it until every rank has registered.
std::string StartRoot();

enum class Frame : uint32_t { kData = 1, kClearToSend = 2, kReduce = 3 };

class Mesh : public std::enable_shared_from_this<Mesh> {
 public:
  // Registers at `root` as `rank` of `nranks` and connects to every peer.
  // Throws std::runtime_error (naming the step) after `timeout`.
  static std::shared_ptr<Mesh> Connect(const std::string& root, int rank, int nranks,
                                       std::chrono::milliseconds timeout);
  // Stops sending (the peers see this rank's connections end); the reader
  // threads, which keep the Mesh alive, drain until their peer closes too,
  // so nothing a peer sent last is lost to a reset.
  void Close();
  ~Mesh();
  Mesh(const Mesh&) = delete;
  Mesh& operator=(const Mesh&) = delete;

  int rank() const { return rank_; }
  int size() const { return nranks_; }
  // Sends one frame to `peer` (to itself: straight into the inbox). False
  // when the connection is gone.
  bool Send(int peer, Frame kind, int64_t seq, const void* data, size_t bytes);

  // The inbox; read and modify under `mu`.
  std::mutex mu;
  std::vector<std::deque<std::vector<char>>> data;  // per sender, in order
  std::vector<int64_t> clear_to_send;               // per sender: receives it has started for us
  struct Reduction {
    std::vector<std::vector<char>> parts;  // per rank
    int arrived = 0;
  };
  std::map<int64_t, Reduction> reductions;  // by sequence number
  std::vector<bool> closed;                 // per peer: its connection ended

 private:
  Mesh(int rank, int nranks);
  void Read(int peer);
  void File(int from, Frame kind, int64_t seq, std::vector<char> payload);

  struct Link;
  int rank_, nranks_;
  std::vector<std::shared_ptr<Link>> links_;  // per peer (null for this rank)
};

}  // namespace hetermoe::emulator::net
