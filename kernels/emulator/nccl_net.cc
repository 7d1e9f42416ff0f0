#include "kernels/emulator/nccl_net.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace hetermoe::emulator::net {
namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void Fail(const std::string& what) {
  throw std::runtime_error("NCCL emulator: " + what + ": " + std::strerror(errno));
}

std::string ListenAddress() {
  const char* a = std::getenv("HETERMOE_EMULATED_NCCL_ADDR");
  return (a && *a) ? a : "127.0.0.1";
}

sockaddr_in Address(const std::string& ip, int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, ip.c_str(), &a.sin_addr) != 1) {
    errno = EINVAL;
    Fail("bad address '" + ip + "'");
  }
  return a;
}

// A listening socket on `ip` (any free port); returns the fd and the port.
int Listen(const std::string& ip, int* port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) Fail("socket");
  sockaddr_in a = Address(ip, 0);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 128) != 0) {
    ::close(fd);
    Fail("listen on " + ip);
  }
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  *port = ntohs(a.sin_port);
  return fd;
}

int Remaining(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left > 0 ? static_cast<int>(left) : 0;
}

void WaitFor(int fd, short events, Clock::time_point deadline, const std::string& what) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, Remaining(deadline));
    if (n > 0) return;
    if (n == 0) {
      errno = ETIMEDOUT;
      Fail(what);
    }
    if (errno != EINTR) Fail(what);
  }
}

int Accept(int listener, Clock::time_point deadline, const std::string& what) {
  WaitFor(listener, POLLIN, deadline, what);
  const int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) Fail(what);
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

int Dial(const sockaddr_in& a, Clock::time_point deadline, const std::string& what) {
  for (;;) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) Fail(what);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0) {
      const int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      return fd;
    }
    ::close(fd);
    if (Remaining(deadline) == 0) Fail(what);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// Whole reads and writes; false on end of stream or error.
bool ReadAll(int fd, void* buf, size_t n) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    const ssize_t r = ::recv(fd, p, n, 0);
    if (r == 0) return false;
    if (r < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool WriteAll(int fd, const void* buf, size_t n) {
  const auto* p = static_cast<const char*>(buf);
  while (n > 0) {
    const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

void ReadWithin(int fd, void* buf, size_t n, Clock::time_point deadline, const std::string& what) {
  WaitFor(fd, POLLIN, deadline, what);
  if (!ReadAll(fd, buf, n)) {
    if (errno == 0) errno = ECONNRESET;
    Fail(what);
  }
}

struct Registration {
  int32_t rank, nranks;
  uint32_t ip;  // network order
  uint16_t port;
};

struct Endpoint {
  uint32_t ip;
  uint16_t port;
};

// The root: collects every rank's endpoint, then tells each all of them.
void ServeRoot(int listener) {
  const auto deadline = Clock::now() + std::chrono::hours(1);
  std::vector<int> fds;
  std::vector<Endpoint> table;
  int nranks = -1;
  try {
    while (nranks < 0 || static_cast<int>(fds.size()) < nranks) {
      const int fd = Accept(listener, deadline, "bootstrap root: accept");
      Registration reg{};
      ReadWithin(fd, &reg, sizeof reg, deadline, "bootstrap root: registration");
      if (nranks < 0) {
        nranks = reg.nranks;
        table.assign(static_cast<size_t>(nranks), Endpoint{0, 0});
      }
      fds.push_back(fd);
      if (reg.nranks == nranks && reg.rank >= 0 && reg.rank < nranks) table[reg.rank] = {reg.ip, reg.port};
    }
    for (int fd : fds) WriteAll(fd, table.data(), table.size() * sizeof(Endpoint));
  } catch (const std::exception&) {
    // A rank that never came: the others time out on their side.
  }
  for (int fd : fds) ::close(fd);
  ::close(listener);
}

}  // namespace

std::string StartRoot() {
  const std::string ip = ListenAddress();
  int port = 0;
  const int listener = Listen(ip, &port);
  std::thread(ServeRoot, listener).detach();
  return ip + ":" + std::to_string(port);
}

struct Mesh::Link {
  int fd = -1;
  std::mutex write_mu;
  bool open = true;  // for writing
};

Mesh::Mesh(int rank, int nranks) : rank_(rank), nranks_(nranks) {
  data.resize(static_cast<size_t>(nranks));
  clear_to_send.assign(static_cast<size_t>(nranks), 0);
  closed.assign(static_cast<size_t>(nranks), false);
  links_.resize(static_cast<size_t>(nranks));
}

std::shared_ptr<Mesh> Mesh::Connect(const std::string& root, int rank, int nranks,
                                    std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  const size_t colon = root.rfind(':');
  if (colon == std::string::npos) {
    errno = EINVAL;
    Fail("unique id '" + root + "' is not ip:port");
  }
  std::shared_ptr<Mesh> mesh(new Mesh(rank, nranks));
  const std::string ip = ListenAddress();
  int port = 0;
  const int listener = Listen(ip, &port);
  try {
    // Register, and learn every rank's endpoint.
    const int boot = Dial(Address(root.substr(0, colon), std::atoi(root.c_str() + colon + 1)), deadline,
                          "rank " + std::to_string(rank) + " connecting to the bootstrap root " + root);
    Registration reg{rank, nranks, Address(ip, port).sin_addr.s_addr, static_cast<uint16_t>(port)};
    std::vector<Endpoint> table(static_cast<size_t>(nranks));
    const bool sent = WriteAll(boot, &reg, sizeof reg);
    try {
      if (!sent) Fail("registration");
      ReadWithin(boot, table.data(), table.size() * sizeof(Endpoint), deadline,
                 "rank " + std::to_string(rank) + " waiting for all " + std::to_string(nranks) +
                     " ranks at the bootstrap root");
    } catch (...) {
      ::close(boot);
      throw;
    }
    ::close(boot);
    // Connect to the lower ranks (saying who this is), accept the higher ones.
    for (int p = 0; p < rank; ++p) {
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = table[p].ip;
      a.sin_port = htons(table[p].port);
      auto link = std::make_shared<Link>();
      link->fd = Dial(a, deadline, "rank " + std::to_string(rank) + " connecting to rank " + std::to_string(p));
      const int32_t me = rank;
      WriteAll(link->fd, &me, sizeof me);
      mesh->links_[p] = link;
    }
    for (int n = rank + 1; n < nranks; ++n) {
      const int fd = Accept(listener, deadline, "rank " + std::to_string(rank) + " waiting for higher ranks");
      int32_t who = -1;
      ReadWithin(fd, &who, sizeof who, deadline, "rank " + std::to_string(rank) + " learning a peer's rank");
      if (who <= rank || who >= nranks || mesh->links_[who]) {
        ::close(fd);
        errno = EPROTO;
        Fail("rank " + std::to_string(rank) + ": unexpected peer rank " + std::to_string(who));
      }
      auto link = std::make_shared<Link>();
      link->fd = fd;
      mesh->links_[who] = link;
    }
  } catch (...) {
    ::close(listener);
    for (auto& l : mesh->links_)
      if (l) ::close(l->fd);
    throw;
  }
  ::close(listener);
  for (int p = 0; p < nranks; ++p)
    if (p != rank) std::thread([mesh, p] { mesh->Read(p); }).detach();
  return mesh;
}

Mesh::~Mesh() {
  for (auto& l : links_)
    if (l) ::close(l->fd);
}

void Mesh::Close() {
  for (auto& l : links_) {
    if (!l) continue;
    std::lock_guard<std::mutex> lock(l->write_mu);
    if (l->open) ::shutdown(l->fd, SHUT_WR);
    l->open = false;
  }
}

struct FrameHeader {
  uint32_t kind;
  uint32_t reserved;
  int64_t seq;
  uint64_t bytes;
};

bool Mesh::Send(int peer, Frame kind, int64_t seq, const void* payload, size_t bytes) {
  if (peer == rank_) {
    const auto* p = static_cast<const char*>(payload);
    File(peer, kind, seq, std::vector<char>(p, p + bytes));
    return true;
  }
  Link& l = *links_[peer];
  std::lock_guard<std::mutex> lock(l.write_mu);
  if (!l.open) return false;
  const FrameHeader h{static_cast<uint32_t>(kind), 0, seq, bytes};
  if (WriteAll(l.fd, &h, sizeof h) && (bytes == 0 || WriteAll(l.fd, payload, bytes))) return true;
  l.open = false;
  return false;
}

void Mesh::Read(int peer) {
  const int fd = links_[peer]->fd;
  FrameHeader h{};
  while (ReadAll(fd, &h, sizeof h)) {
    std::vector<char> payload(h.bytes);
    if (h.bytes > 0 && !ReadAll(fd, payload.data(), h.bytes)) break;
    File(peer, static_cast<Frame>(h.kind), h.seq, std::move(payload));
  }
  std::lock_guard<std::mutex> lock(mu);
  closed[peer] = true;
}

void Mesh::File(int from, Frame kind, int64_t seq, std::vector<char> payload) {
  std::lock_guard<std::mutex> lock(mu);
  switch (kind) {
    case Frame::kData: data[from].push_back(std::move(payload)); break;
    case Frame::kClearToSend: ++clear_to_send[from]; break;
    case Frame::kReduce: {
      Reduction& r = reductions[seq];
      r.parts.resize(static_cast<size_t>(nranks_));
      r.parts[from] = std::move(payload);
      ++r.arrived;
      break;
    }
  }
}

}  // namespace hetermoe::emulator::net
