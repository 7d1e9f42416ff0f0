// TcpStore: the rendezvous key-value store the ranks of a job meet at.
//
// Rank 0 serves it on MASTER_ADDR:MASTER_PORT (the address a Kubernetes pod
// gets from its headless Service); every rank, rank 0 included, is a client.
// Gloo's Debian snapshot ships only file/hash/redis stores, and pods share no
// file system, so this small TCP store fills the gap. Protocol: one request
// per round trip over a persistent connection, each field a u32 length plus
// bytes: SET key value -> OK; GET key -> value (the server holds the reply
// until the key exists, or answers NOTFOUND when the client's deadline
// passes).
#pragma once

#include <gloo/rendezvous/store.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace hetermoe::comm {

// The server side (rank 0). Thread-safe; stops on destruction.
class TcpStoreServer {
 public:
  // Binds host:port (port 0 = any free port) and serves in background threads.
  TcpStoreServer(const std::string& host, int port);
  ~TcpStoreServer();
  int port() const { return port_; }

 private:
  void AcceptLoop();
  void Serve(int fd);

  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::vector<char>> data_;
  std::vector<std::thread> workers_;
  std::vector<int> client_fds_;
};

// The client side: a gloo::rendezvous::Store. Not thread-safe (one per rank).
class TcpStore final : public gloo::rendezvous::Store {
 public:
  // Connects, retrying until `timeout` (the server may start later).
  TcpStore(const std::string& host, int port, std::chrono::milliseconds timeout);
  ~TcpStore() override;

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override;

 private:
  std::vector<char> Get(const std::string& key, std::chrono::milliseconds timeout);
  std::string where_;
  int fd_ = -1;
  std::chrono::milliseconds timeout_;
};

}  // namespace hetermoe::comm
