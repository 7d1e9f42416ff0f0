// hetermoe-operator: the program's edge. Parses flags, runs the Operator
// until SIGTERM/SIGINT (graceful: workers finish, the Lease is handed back)
// or until leadership is lost (exit 1, as controller-runtime does), and turns
// every error into one line on stderr with a non-zero exit.
//
//   hetermoe-operator [--kubeconfig FILE] [--namespace NS] [--leader-elect]
//                     [--metrics-bind-address :8080] [--health-probe-bind-address :8081]
//                     [--workers 4] [--log-format text|json]
#include <csignal>
#include <cstdio>
#include <pthread.h>

#include <CLI/CLI.hpp>

#include "common/error.h"
#include "operator/machinery/log.h"
#include "operator/controller/operator.h"
#include "operator/core/gpu_classification.h"

namespace {

// ":8080" -> "0.0.0.0:8080"; "0" or "" -> "" (off).
std::string BindAddress(const std::string& flag) {
  if (flag.empty() || flag == "0") return "";
  if (flag.front() == ':') return "0.0.0.0" + flag;
  return flag;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace hetermoe::op;
  CLI::App app{"hetermoe-operator: runs HeterMoEJobs on heterogeneous GPU clusters"};
  app.set_version_flag("--version", "hetermoe-operator 0.1.0");
  std::string kubeconfig, ns, metrics_bind = ":8080", health_bind = ":8081", log_format = "text";
  std::string lease_namespace, attention_min_cc = "8.0";
  bool leader_elect = false;
  int workers = 4;
  app.add_option("--kubeconfig", kubeconfig, "Kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)");
  app.add_option("--namespace", ns, "Namespace to watch (empty = all)");
  app.add_flag("--leader-elect", leader_elect, "Run only while holding the Lease (for more than one replica)");
  app.add_option("--leader-election-namespace", lease_namespace,
                 "Namespace of the Lease (default: the kubeconfig's or the pod's namespace)");
  app.add_option("--metrics-bind-address", metrics_bind, "Prometheus /metrics address (\"0\" = off)");
  app.add_option("--health-probe-bind-address", health_bind, "/healthz and /readyz address (\"0\" = off)");
  app.add_option("--workers", workers, "Concurrent job reconciles")->check(CLI::Range(1, 256));
  app.add_option("--log-format", log_format, "Log format")->check(CLI::IsMember({"text", "json"}));
  app.add_option("--attention-min-compute-capability", attention_min_cc,
                 "GPUs with at least this compute capability form the attention tier");
  CLI11_PARSE(app, argc, argv);
  SetLogFormat(log_format == "json" ? LogFormat::kJson : LogFormat::kText);

  // Signals are taken by sigwait() below, never by the worker threads.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGUSR1);  // lost leadership
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  try {
    auto cc = ParseComputeCapability(attention_min_cc);
    if (!cc) throw hetermoe::Error("--attention-min-compute-capability: expected \"major.minor\", got " + attention_min_cc);
    KubeConfig config = ResolveKubeConfig(kubeconfig);
    OperatorOptions options;
    options.namespace_ = ns;
    options.workers = workers;
    options.leader_elect = leader_elect;
    options.lease_namespace = lease_namespace.empty() ? config.default_namespace : lease_namespace;
    options.metrics_bind_address = BindAddress(metrics_bind);
    options.health_bind_address = BindAddress(health_bind);
    options.tier_rule.attention_min_compute_tenths = cc->Tenths();
    const pthread_t main_thread = pthread_self();
    options.on_lost_leadership = [main_thread] { pthread_kill(main_thread, SIGUSR1); };
    LogInfo("starting", {{"server", config.server}, {"namespace", ns.empty() ? "<all>" : ns},
                         {"leader-elect", leader_elect ? "true" : "false"}});
    Operator op(std::move(config), std::move(options));
    op.Start();
    int sig = 0;
    sigwait(&signals, &sig);
    if (sig == SIGUSR1) {
      op.Kill();
      LogError("exiting: lost leadership");
      return 1;
    }
    LogInfo("shutting down", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
    op.Stop();
    return 0;
  } catch (const hetermoe::Error& e) {
    std::fprintf(stderr, "hetermoe-operator: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hetermoe-operator: internal error: %s\n", e.what());
    return 2;
  }
}
