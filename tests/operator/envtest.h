// Envtest: a real kube-apiserver (built by setup-envtest.sh) and etcd on
// loopback for the operator's integration tests, as controller-runtime's
// envtest does: binaries from $KUBEBUILDER_ASSETS, a throw-away CA, a
// serving certificate for 127.0.0.1, an admin client certificate
// (O=system:masters), RBAC on, the insecure port off, and the HeterMoEJob
// CRD installed. No controller-manager, scheduler or kubelet: the tests
// play those parts (bind pods, set their status, finish deletions).
//
// Start() throws hetermoe::Error with a clear message when the binaries are
// missing. RestartApiserver() and CompactEtcd() let tests break watches.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>

#include "operator/kube/kube_client.h"

namespace hetermoe::op::envtest {

class Envtest {
 public:
  Envtest() = default;
  ~Envtest();

  void Start();
  void Stop();
  void StopApiserver();
  void StartApiserver();  // same port, same etcd
  void RestartApiserver() {
    StopApiserver();
    StartApiserver();
  }
  // Compacts etcd's history up to its current revision; returns it.
  int64_t CompactEtcd();

  KubeConfig AdminConfig() const;
  const std::string& kubeconfig_path() const { return kubeconfig_; }
  const std::string& dir() const { return dir_; }
  KubeClient& client() { return *client_; }

 private:
  void WaitReady(double seconds);
  std::string EtcdPost(const std::string& path, const std::string& body);

  std::string assets_, dir_, kubeconfig_;
  int etcd_port_ = 0, etcd_peer_port_ = 0, api_port_ = 0;
  pid_t etcd_pid_ = -1, api_pid_ = -1;
  std::unique_ptr<KubeClient> client_;
};

// The process-wide instance (started on first use, stopped at exit).
Envtest& Shared();

// Polls `check` every 50 ms until it is true or `seconds` pass.
bool Eventually(const std::function<bool()>& check, double seconds = 20);

}  // namespace hetermoe::op::envtest
