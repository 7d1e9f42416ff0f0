// LeaderElector: one active operator among replicas, by holding a
// coordination.k8s.io/v1 Lease (as client-go's leaderelection).
//
// A candidate reads the Lease every retry period; it takes it when there is
// none, when it is free (empty holder, as a leader leaves it on shutdown), or
// when the holder's record has not changed for a lease duration of *our*
// clock (no clock sync between hosts is assumed). Updates carry the
// resourceVersion, so two candidates cannot both win (409 for the loser).
// The leader renews every retry period; if it cannot renew within the renew
// deadline it stops leading (the binary then exits, as controller-runtime
// does). Defaults: lease 15 s, renew deadline 10 s, retry 2 s.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

#include "operator/kube/kube_client.h"

namespace hetermoe::op {

class LeaderElector {
 public:
  struct Options {
    std::string namespace_ = "default";
    std::string name = "hetermoe-operator";
    std::string identity;
    double lease_seconds = 15, renew_deadline_seconds = 10, retry_period_seconds = 2;
  };
  struct Callbacks {
    std::function<void()> on_started_leading;
    std::function<void()> on_stopped_leading;
    std::function<void(const std::string& leader)> on_new_leader;
  };

  LeaderElector(KubeClient& client, Options options, Callbacks callbacks);

  // Campaigns, then leads until Stop() or until renewing fails. Blocks.
  void Run();
  // Ends Run(); a leader hands the Lease back (holder cleared) first.
  void Stop();
  bool IsLeader() const { return leading_; }
  // Makes a later Stop() keep the Lease (as if the process died).
  void Abandon() { abandon_ = true; }

 private:
  bool TryAcquireOrRenew();
  void Release();
  bool Wait(double seconds);  // false when stopped

  KubeClient& client_;
  Options options_;
  Callbacks callbacks_;
  std::atomic<bool> leading_{false}, stop_{false}, abandon_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  // What we last saw, and when (our monotonic clock).
  std::string observed_holder_, observed_renew_;
  double observed_at_ = 0;
  std::string last_reported_leader_;
};

// A Lease's MicroTime: "2025-05-20T10:00:00.123456Z".
std::string MicroTimeNow();

}  // namespace hetermoe::op
