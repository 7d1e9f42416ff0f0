// HealthServer: /healthz (the process is alive) and /readyz (caches synced
// and, with leader election, campaigning) for the kubelet's probes. A tiny
// blocking HTTP/1.0 responder on its own thread; nothing else is served.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <thread>

namespace hetermoe::op {

class HealthServer {
 public:
  // `bind_address` is "host:port" (":8081" = all interfaces; port 0 = any).
  HealthServer(const std::string& bind_address, std::function<bool()> ready);
  ~HealthServer();
  int port() const { return port_; }

 private:
  void Serve();

  std::function<bool()> ready_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace hetermoe::op
