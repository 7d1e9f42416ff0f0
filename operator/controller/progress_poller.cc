// ProgressPoller: see progress_poller.h.
#include "operator/controller/progress_poller.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <set>

#include "operator/core/children.h"
#include "operator/core/conditions.h"
#include "operator/core/progress.h"
#include "operator/kube/resource.h"

namespace hetermoe::op {

using nlohmann::json;

std::optional<std::string> HttpGet(const std::string& host, int port, const std::string& path, double timeout_seconds) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 || !res) return std::nullopt;
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  const int timeout_ms = static_cast<int>(timeout_seconds * 1000);
  bool ok = fd >= 0;
  if (ok && connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
    pollfd p{fd, POLLOUT, 0};
    int err = 0;
    socklen_t len = sizeof err;
    ok = errno == EINPROGRESS && poll(&p, 1, timeout_ms) == 1 &&
         getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0;
  }
  freeaddrinfo(res);
  std::string response;
  if (ok) {
    const std::string request = "GET " + path + " HTTP/1.0\r\nHost: " + host + "\r\nAccept: text/plain\r\n\r\n";
    ok = send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size());
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    char buf[16384];
    while (ok) {
      int left = static_cast<int>(
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count());
      pollfd p{fd, POLLIN, 0};
      if (left <= 0 || poll(&p, 1, left) != 1) {
        ok = false;
        break;
      }
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n == 0) break;
      if (n < 0) {
        ok = false;
        break;
      }
      response.append(buf, static_cast<size_t>(n));
      if (response.size() > (8u << 20)) ok = false;  // not a metrics page
    }
  }
  if (fd >= 0) close(fd);
  if (!ok || (response.compare(0, 12, "HTTP/1.1 200") != 0 && response.compare(0, 12, "HTTP/1.0 200") != 0))
    return std::nullopt;
  size_t body = response.find("\r\n\r\n");
  if (body == std::string::npos) return std::nullopt;
  return response.substr(body + 4);
}

ProgressPoller::ProgressPoller(KubeClient& client, Informer& jobs, Informer& pods, double tick_seconds)
    : client_(client), jobs_(jobs), pods_(pods), tick_seconds_(tick_seconds) {}

ProgressPoller::~ProgressPoller() { Stop(); }

void ProgressPoller::Start() {
  thread_ = std::thread([this] {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      lock.unlock();
      PollOnce();
      lock.lock();
      cv_.wait_for(lock, std::chrono::duration<double>(tick_seconds_), [this] { return stop_.load(); });
    }
  });
}

void ProgressPoller::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void ProgressPoller::PollOnce() {
  const auto now = std::chrono::steady_clock::now();
  std::set<std::string> running;
  for (const ObjectPtr& object : jobs_.List()) {
    if (stop_) return;
    const json& status = object->value("status", json::object());
    if (status.value("state", "") != "Running") continue;
    const std::string key = ObjectKey(*object);
    running.insert(key);
    auto due = next_poll_.find(key);
    if (due != next_poll_.end() && now < due->second) continue;
    JobSpec spec;
    try {
      spec = ParseJobSpec(object->at("spec"));
    } catch (const std::exception&) {
      continue;
    }
    if (spec.monitoring.progress_interval_seconds <= 0) continue;
    next_poll_[key] = now + std::chrono::seconds(spec.monitoring.progress_interval_seconds);

    const json& meta = object->at("metadata");
    const std::string ns = meta.value("namespace", ""), name = meta.value("name", "");
    ObjectPtr rank0 = pods_.Get(ns + "/" + PodName(name, Role::kAttention, 0));
    if (!rank0) continue;
    const json pod_status = rank0->value("status", json::object());
    const std::string ip = pod_status.value("podIP", "");
    if (ip.empty() || pod_status.value("phase", "") != "Running") continue;
    auto text = HttpGet(ip, static_cast<int>(spec.monitoring.metrics_port), "/metrics", 2.0);
    if (!text) continue;
    const int64_t unix_now =
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    auto progress = ProgressFromMetrics(*text, spec.training, FormatTime(unix_now));
    if (!progress) continue;
    JobStatus wrapper;
    wrapper.progress = progress;
    json patch = {{"status", {{"progress", StatusToJson(wrapper)["progress"]}}}};
    const json old = status.value("progress", json::object());
    if (old.value("step", int64_t{-1}) == progress->step && old.contains("loss") == progress->loss.has_value() &&
        (!progress->loss || old.value("loss", 0.0) == *progress->loss))
      continue;  // nothing new
    try {
      client_.MergePatch(kHeterMoEJobs.Path(ns, name, "status"), patch);
    } catch (const ApiError&) {
      // Retried at the next interval.
    }
  }
  // Forget jobs that stopped running (or were deleted).
  for (auto it = next_poll_.begin(); it != next_poll_.end();)
    it = running.count(it->first) ? std::next(it) : next_poll_.erase(it);
}

}  // namespace hetermoe::op
