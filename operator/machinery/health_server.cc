// HealthServer: see health_server.h.
#include "operator/machinery/health_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "common/error.h"

namespace hetermoe::op {

HealthServer::HealthServer(const std::string& bind_address, std::function<bool()> ready) : ready_(std::move(ready)) {
  size_t colon = bind_address.rfind(':');
  if (colon == std::string::npos) throw Error("health probe address \"" + bind_address + "\": expected host:port");
  std::string host = bind_address.substr(0, colon);
  int port = std::stoi(bind_address.substr(colon + 1));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (host.empty() || host == "0.0.0.0") addr.sin_addr.s_addr = htonl(INADDR_ANY);
  else if (inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host.c_str(), &addr.sin_addr) != 1)
    throw Error("health probe address \"" + bind_address + "\": not an IPv4 address");
  fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(fd_, 16) != 0) {
    std::string err = std::strerror(errno);
    close(fd_);
    throw Error("health probe address \"" + bind_address + "\": " + err);
  }
  socklen_t len = sizeof addr;
  getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  thread_ = std::thread([this] { Serve(); });
}

HealthServer::~HealthServer() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  close(fd_);
}

void HealthServer::Serve() {
  while (!stop_) {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;
    int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    timeval tv{2, 0};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[1024];
    ssize_t n = recv(c, buf, sizeof buf - 1, 0);
    std::string request(buf, n > 0 ? static_cast<size_t>(n) : 0);
    std::string path = request.substr(0, request.find("\r\n"));
    int code = 404;
    std::string body = "not found\n";
    if (path.rfind("GET /healthz", 0) == 0) {
      code = 200;
      body = "ok\n";
    } else if (path.rfind("GET /readyz", 0) == 0) {
      bool ok = ready_ && ready_();
      code = ok ? 200 : 503;
      body = ok ? "ok\n" : "not ready\n";
    }
    std::string response = "HTTP/1.0 " + std::to_string(code) + (code == 200 ? " OK" : code == 503 ? " Service Unavailable" : " Not Found") +
                           "\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
                           "\r\nConnection: close\r\n\r\n" + body;
    send(c, response.data(), response.size(), MSG_NOSIGNAL);
    close(c);
  }
}

}  // namespace hetermoe::op
