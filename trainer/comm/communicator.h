// Communicator: the collectives the distributed engine needs, behind one
// interface (Gloo over TCP on CPU; NCCL on GPU, see the CUDA backend issue).
//
// Point-to-point operations are asynchronous: Isend/Irecv post the transfer
// and return a Request; Wait() blocks until it completes, and turns a dead or
// silent peer into a hetermoe::Error naming that peer's rank once the timeout
// passes. A message to one's own rank is a local copy, so an engine may treat
// every owner of an expert alike. Messages between a pair of ranks with the
// same tag are matched in the order they were posted. A receive buffer may be
// larger than the message (worst-case buffers posted up front).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace hetermoe::comm {

class Request {
 public:
  virtual ~Request() = default;
  virtual void Wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Global rank of member i (for messages that name the peer).
  virtual int GlobalRank(int member) const = 0;

  virtual std::unique_ptr<Request> Isend(const void* data, size_t bytes, int peer, uint32_t tag) = 0;
  virtual std::unique_ptr<Request> Irecv(void* data, size_t bytes, int peer, uint32_t tag) = 0;

  // Sum across members, in place.
  virtual void AllReduceSum(float* data, size_t count) = 0;
  virtual void AllReduceSum(double* data, size_t count) = 0;
  virtual void Barrier() = 0;

  // All-to-all with unequal splits: send_counts[p] floats go to member p
  // (consecutive in `send`), recv_counts[p] floats come from p.
  void AllToAllV(const float* send, const std::vector<size_t>& send_counts, float* recv,
                 const std::vector<size_t>& recv_counts, uint32_t tag);
};

// How a rank finds the others (from a pod's environment, or the launcher).
struct RendezvousOptions {
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  int world_size = 1;
  int rank = 0;
  std::string listen_addr = "127.0.0.1";         // this rank's address for data connections
  std::chrono::milliseconds timeout{60000};        // rendezvous and every collective
};

// Joins the job: rank 0 serves the store, everyone connects, checks that all
// agree on WORLD_SIZE, and builds the world communicator. Further
// communicators (subgroups, separate channels) come from Group().
class World {
 public:
  explicit World(const RendezvousOptions& options);
  ~World();
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  int rank() const;
  int size() const;
  // A communicator over `members` (global ranks, ascending; must contain this
  // rank) with its own connections, named so that every member asks for the
  // same one. Collective over the members.
  std::unique_ptr<Communicator> Group(const std::string& name, const std::vector<int>& members);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hetermoe::comm
