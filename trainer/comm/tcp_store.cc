#include "trainer/comm/tcp_store.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace hetermoe::comm {
namespace {

using Clock = std::chrono::steady_clock;

// Reads or writes exactly n bytes; false on EOF or error.
bool WriteAll(int fd, const void* buf, size_t n) {
  const char* p = static_cast<const char*>(buf);
  while (n > 0) {
    const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool ReadAll(int fd, void* buf, size_t n) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    const ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool WriteField(int fd, const void* data, uint32_t n) {
  return WriteAll(fd, &n, sizeof n) && (n == 0 || WriteAll(fd, data, n));
}

bool ReadField(int fd, std::vector<char>* out) {
  uint32_t n = 0;
  if (!ReadAll(fd, &n, sizeof n)) return false;
  if (n > (1u << 30)) return false;  // no store value is near 1 GiB: a corrupt peer
  out->resize(n);
  return n == 0 || ReadAll(fd, out->data(), n);
}

// Resolves `host`; false (and `why`) when the name does not resolve (yet).
bool TryResolve(const std::string& host, int port, sockaddr_in* out, std::string* why) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0 || res == nullptr) {
    *why = std::string("cannot resolve \"") + host + "\": " + gai_strerror(rc);
    return false;
  }
  *out = *reinterpret_cast<sockaddr_in*>(res->ai_addr);
  ::freeaddrinfo(res);
  out->sin_port = htons(static_cast<uint16_t>(port));
  return true;
}

sockaddr_in Resolve(const std::string& host, int port) {
  sockaddr_in addr{};
  std::string why;
  if (!TryResolve(host, port, &addr, &why)) throw Error("rendezvous: " + why);
  return addr;
}

}  // namespace

TcpStoreServer::TcpStoreServer(const std::string& host, int port) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  const int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr = Resolve(host, port);
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listen_fd_, 1024) != 0) {
    const std::string why = std::strerror(errno);
    ::close(listen_fd_);
    throw Error("rendezvous: rank 0 cannot listen on " + host + ":" + std::to_string(port) + ": " + why);
  }
  socklen_t len = sizeof addr;
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  acceptor_ = std::thread([this] { AcceptLoop(); });
}

TcpStoreServer::~TcpStoreServer() {
  stop_ = true;
  ::shutdown(listen_fd_, SHUT_RDWR);
  ::close(listen_fd_);
  acceptor_.join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (int fd : client_fds_) ::shutdown(fd, SHUT_RDWR);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void TcpStoreServer::AcceptLoop() {
  while (!stop_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) continue;
    const int fd = ::accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) continue;
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    std::lock_guard<std::mutex> lock(mu_);
    client_fds_.push_back(fd);
    workers_.emplace_back([this, fd] { Serve(fd); });
  }
}

void TcpStoreServer::Serve(int fd) {
  std::vector<char> op, key, value;
  while (!stop_) {
    if (!ReadField(fd, &op) || !ReadField(fd, &key)) break;
    const std::string k(key.begin(), key.end());
    if (op.size() == 3 && std::memcmp(op.data(), "SET", 3) == 0) {
      if (!ReadField(fd, &value)) break;
      {
        std::lock_guard<std::mutex> lock(mu_);
        data_[k] = value;
      }
      cv_.notify_all();
      if (!WriteField(fd, "OK", 2)) break;
    } else if (op.size() == 3 && std::memcmp(op.data(), "GET", 3) == 0) {
      std::vector<char> timeout_ms;
      if (!ReadField(fd, &timeout_ms) || timeout_ms.size() != sizeof(int64_t)) break;
      int64_t ms = 0;
      std::memcpy(&ms, timeout_ms.data(), sizeof ms);
      std::unique_lock<std::mutex> lock(mu_);
      const bool found = cv_.wait_for(lock, std::chrono::milliseconds(ms),
                                      [&] { return stop_ || data_.count(k) > 0; });
      if (!found || stop_) {
        lock.unlock();
        if (!WriteField(fd, "NOTFOUND", 8)) break;
        continue;
      }
      const std::vector<char> v = data_[k];
      lock.unlock();
      if (!WriteField(fd, "VAL", 3) || !WriteField(fd, v.data(), static_cast<uint32_t>(v.size())))
        break;
    } else {
      break;  // protocol error: drop the client
    }
  }
  ::close(fd);
}

TcpStore::TcpStore(const std::string& host, int port, std::chrono::milliseconds timeout)
    : where_(host + ":" + std::to_string(port)), timeout_(timeout) {
  // Rank 0 may start after us, and its name may not resolve until it has an
  // address (a pod's DNS record appears with its IP): retry both until the
  // deadline.
  const auto deadline = Clock::now() + timeout;
  std::string last_error = "timed out";
  while (true) {
    sockaddr_in addr{};
    if (TryResolve(host, port, &addr, &last_error)) {
      fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
      if (::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) break;
      last_error = std::strerror(errno);
      ::close(fd_);
      fd_ = -1;
    }
    if (Clock::now() >= deadline)
      throw RetryableError("rendezvous: cannot reach rank 0 at MASTER_ADDR:MASTER_PORT = " + where_ +
                  " within " + std::to_string(timeout.count() / 1000) + " s (" + last_error + ")");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

TcpStore::~TcpStore() {
  if (fd_ >= 0) ::close(fd_);
}

void TcpStore::set(const std::string& key, const std::vector<char>& data) {
  std::vector<char> reply;
  if (!WriteField(fd_, "SET", 3) || !WriteField(fd_, key.data(), static_cast<uint32_t>(key.size())) ||
      !WriteField(fd_, data.data(), static_cast<uint32_t>(data.size())) || !ReadField(fd_, &reply))
    throw RetryableError("rendezvous: lost the connection to rank 0's store at " + where_);
}

std::vector<char> TcpStore::Get(const std::string& key, std::chrono::milliseconds timeout) {
  const int64_t ms = timeout.count();
  std::vector<char> status, value;
  if (!WriteField(fd_, "GET", 3) || !WriteField(fd_, key.data(), static_cast<uint32_t>(key.size())) ||
      !WriteField(fd_, &ms, sizeof ms) || !ReadField(fd_, &status))
    throw RetryableError("rendezvous: lost the connection to rank 0's store at " + where_);
  if (std::string(status.begin(), status.end()) != "VAL")
    throw RetryableError("rendezvous: timed out after " + std::to_string(ms / 1000) + " s waiting for \"" +
                key + "\" (a rank did not arrive: check WORLD_SIZE and that every rank started)");
  if (!ReadField(fd_, &value)) throw RetryableError("rendezvous: lost the connection to rank 0's store at " + where_);
  return value;
}

std::vector<char> TcpStore::get(const std::string& key) { return Get(key, timeout_); }

void TcpStore::wait(const std::vector<std::string>& keys) { wait(keys, timeout_); }

void TcpStore::wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) {
  for (const auto& k : keys) Get(k, timeout);
}

}  // namespace hetermoe::comm
