// Leader election on a Lease: see leader_election.h.
#include "operator/machinery/leader_election.h"

#include <chrono>
#include <cmath>
#include <ctime>

#include "operator/kube/resource.h"

namespace hetermoe::op {

using nlohmann::json;

namespace {

double Monotonic() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

std::string MicroTimeNow() {
  auto now = std::chrono::system_clock::now();
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(us / 1000000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  char out[64];
  std::snprintf(out, sizeof out, "%s.%06lldZ", buf, static_cast<long long>(us % 1000000));
  return out;
}

LeaderElector::LeaderElector(KubeClient& client, Options options, Callbacks callbacks)
    : client_(client), options_(std::move(options)), callbacks_(std::move(callbacks)) {}

bool LeaderElector::Wait(double seconds) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, std::chrono::duration<double>(seconds), [this] { return stop_.load(); });
  return !stop_;
}

bool LeaderElector::TryAcquireOrRenew() {
  const std::string path = kLeases.Path(options_.namespace_, options_.name);
  const std::string now = MicroTimeNow();
  const int duration = static_cast<int>(std::ceil(options_.lease_seconds));
  json lease;
  try {
    lease = client_.Get(path);
  } catch (const ApiError& e) {
    if (!e.NotFound()) return false;
    json fresh = {{"apiVersion", "coordination.k8s.io/v1"},
                  {"kind", "Lease"},
                  {"metadata", {{"name", options_.name}, {"namespace", options_.namespace_}}},
                  {"spec",
                   {{"holderIdentity", options_.identity},
                    {"leaseDurationSeconds", duration},
                    {"acquireTime", now},
                    {"renewTime", now},
                    {"leaseTransitions", 0}}}};
    try {
      client_.Create(kLeases.Path(options_.namespace_), fresh);
    } catch (const ApiError&) {
      return false;  // someone else created it first
    }
    observed_holder_ = options_.identity;
    observed_renew_ = now;
    observed_at_ = Monotonic();
    return true;
  }
  json spec = lease.value("spec", json::object());
  const std::string holder = spec.value("holderIdentity", "");
  const std::string renew = spec.value("renewTime", "");
  if (holder != observed_holder_ || renew != observed_renew_) {
    observed_holder_ = holder;
    observed_renew_ = renew;
    observed_at_ = Monotonic();
  }
  if (!holder.empty() && holder != last_reported_leader_) {
    last_reported_leader_ = holder;
    if (callbacks_.on_new_leader) callbacks_.on_new_leader(holder);
  }
  const double lease_seconds = spec.value("leaseDurationSeconds", duration);
  const bool held_by_other = !holder.empty() && holder != options_.identity;
  if (held_by_other && Monotonic() < observed_at_ + lease_seconds) return false;

  if (holder != options_.identity) {
    spec["acquireTime"] = now;
    spec["leaseTransitions"] = spec.value("leaseTransitions", 0) + 1;
  }
  spec["holderIdentity"] = options_.identity;
  spec["leaseDurationSeconds"] = duration;
  spec["renewTime"] = now;
  lease["spec"] = spec;
  try {
    client_.Replace(path, lease);  // carries metadata.resourceVersion: 409 if it moved
  } catch (const ApiError&) {
    return false;
  }
  observed_holder_ = options_.identity;
  observed_renew_ = now;
  observed_at_ = Monotonic();
  return true;
}

void LeaderElector::Release() {
  const std::string path = kLeases.Path(options_.namespace_, options_.name);
  try {
    json lease = client_.Get(path);
    if (lease["spec"].value("holderIdentity", "") != options_.identity) return;
    lease["spec"]["holderIdentity"] = "";
    lease["spec"]["leaseDurationSeconds"] = 1;
    lease["spec"]["renewTime"] = MicroTimeNow();
    client_.Replace(path, lease);
  } catch (const ApiError&) {
    // The lease expires on its own.
  }
}

void LeaderElector::Run() {
  while (!stop_) {
    if (TryAcquireOrRenew()) break;
    if (!Wait(options_.retry_period_seconds)) return;
  }
  if (stop_) return;
  leading_ = true;
  last_reported_leader_ = options_.identity;
  if (callbacks_.on_new_leader) callbacks_.on_new_leader(options_.identity);
  if (callbacks_.on_started_leading) callbacks_.on_started_leading();
  double last_renew = Monotonic();
  while (Wait(options_.retry_period_seconds)) {
    if (TryAcquireOrRenew()) {
      last_renew = Monotonic();
    } else if (Monotonic() - last_renew > options_.renew_deadline_seconds) {
      break;  // lost it
    }
  }
  if (stop_ && !abandon_) Release();
  leading_ = false;
  if (callbacks_.on_stopped_leading) callbacks_.on_stopped_leading();
}

void LeaderElector::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
}

}  // namespace hetermoe::op
