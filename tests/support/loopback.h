// Loopback sockets for test servers, shared by the test suites.
//
// ListenOnLoopback: a listening socket on 127.0.0.1 at a free port (bound to
// port 0, the port read back). FreeLoopbackPort: a port that was free a moment
// ago, for servers that cannot bind port 0 themselves; another process could
// take it in between, which on a test machine is rare enough.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace hetermoe::testing {

inline int ListenOnLoopback(int backlog, int* port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  listen(fd, backlog);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  *port = ntohs(addr.sin_port);
  return fd;
}

inline int FreeLoopbackPort() {
  int port = 0;
  close(ListenOnLoopback(1, &port));
  return port;
}

}  // namespace hetermoe::testing
