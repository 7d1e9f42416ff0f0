// Operator benchmark against a real kube-apiserver + etcd (the envtest of
// tests/operator): N GPU nodes and M HeterMoEJobs, measuring
//   - time to label every node (hetermoe.io/gpu-tier) after the operator starts,
//   - time from creating the jobs to all their pods existing,
//   - reconcile latency p50/p99 of the job controller,
//   - the operator's peak memory (VmHWM of this process, with the RSS just
//     before the operator starts as the baseline: the operator runs
//     in-process, next to the bench's own node and pod watches).
// Run on demand (not in CI):
//   export KUBEBUILDER_ASSETS=$(tests/operator/setup-envtest.sh)
//   build/bench/operator/hetermoe_operator_bench --nodes 5000 --jobs 200
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <thread>

#include <CLI/CLI.hpp>

#include "envtest.h"
#include "operator/machinery/informer.h"
#include "operator/machinery/log.h"
#include "operator/controller/operator.h"
#include "operator/core/children.h"
#include "operator/core/gpu_classification.h"
#include "operator/kube/resource.h"
#include "test_jobs.h"

using namespace hetermoe::op;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

long StatusKb(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key, 0) == 0) return std::stol(line.substr(std::string(key).size()));
  return 0;
}

// Counts the objects an informer holds that satisfy `pred` (the bench's own
// watch, so polling the count costs no requests).
struct Counter {
  std::atomic<int64_t> n{0};
  Counter(Informer& informer, std::function<bool(const json&)> pred) {
    informer.AddHandler([this, pred](const ObjectPtr& old, const ObjectPtr& now) {
      int64_t before = old && pred(*old) ? 1 : 0;
      int64_t after = now && pred(*now) ? 1 : 0;
      n += after - before;
    });
  }
};

void Parallel(int threads, int n, const std::function<void(int)>& body) {
  std::atomic<int> next{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&] {
      for (int i = next++; i < n; i = next++) body(i);
    });
  for (auto& th : pool) th.join();
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"hetermoe-operator benchmark against a real kube-apiserver"};
  int nodes = 5000, jobs = 200, workers = 4, namespaces = 10;
  app.add_option("--nodes", nodes, "GPU nodes (half A40, half V100, 8 GPUs each)");
  app.add_option("--jobs", jobs, "HeterMoEJobs (2 attention + 4 expert pods each)");
  app.add_option("--workers", workers, "Operator workers");
  app.add_option("--namespaces", namespaces, "Namespaces the jobs spread over");
  CLI11_PARSE(app, argc, argv);
  SetLogQuiet(true);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  try {
    auto& env = envtest::Shared();
    KubeClient& api = env.client();
    std::printf("apiserver up; creating %d nodes\n", nodes);
    auto t = Clock::now();
    Parallel(8, nodes, [&](int i) {
      bool a40 = i % 2 == 0;
      json node = fixtures::GpuNodeJson((a40 ? "a40-" : "v100-") + std::to_string(i),
                                        a40 ? "NVIDIA-A40" : "Tesla-V100-SXM2-32GB", a40 ? 8 : 7, a40 ? 6 : 0, 8);
      node["apiVersion"] = "v1";
      node["kind"] = "Node";
      api.Create(kNodes.Path(), node);
    });
    std::printf("created %d nodes in %.1f s\n", nodes, Since(t));
    for (int n = 0; n < namespaces; ++n)
      api.Create(kNamespaces.Path(),
                 {{"apiVersion", "v1"}, {"kind", "Namespace"}, {"metadata", {{"name", "bench-" + std::to_string(n)}}}});

    Informer node_watch(api, Informer::Options{kNodes, "", "", 500});
    Counter labelled(node_watch, [](const json& n) {
      return n["metadata"].value("labels", json::object()).contains(kLabelTier);
    });
    Informer pod_watch(api, Informer::Options{kPods, "", kLabelJobName, 500});
    Counter pods(pod_watch, [](const json&) { return true; });
    node_watch.Start();
    pod_watch.Start();
    node_watch.WaitForSync(120);
    pod_watch.WaitForSync(120);
    const long rss_before = StatusKb("VmRSS:");
    std::mutex mu;
    std::vector<double> job_reconciles;
    OperatorOptions options;
    options.workers = workers;
    options.client_qps = 200;
    options.client_burst = 400;
    Operator op(env.AdminConfig(), options);
    op.metrics().SetReconcileObserver([&](const std::string& controller, double seconds) {
      if (controller != "hetermoejob") return;
      std::lock_guard<std::mutex> lock(mu);
      job_reconciles.push_back(seconds);
    });
    t = Clock::now();
    op.Start();
    const double sync = Since(t);
    while (labelled.n < nodes) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const double label_seconds = Since(t);
    std::printf("caches synced in %.1f s; all %d nodes labelled %.1f s after start\n", sync, nodes, label_seconds);

    t = Clock::now();
    Parallel(8, jobs, [&](int i) {
      json job = fixtures::TinyJobJson("job-" + std::to_string(i), "bench-" + std::to_string(i % namespaces));
      for (const char* k : {"uid", "generation", "resourceVersion", "creationTimestamp"}) job["metadata"].erase(k);
      job["spec"]["checkpoint"] = json::object();
      api.Create(kHeterMoEJobs.Path("bench-" + std::to_string(i % namespaces)), job);
    });
    const double create_seconds = Since(t);
    const int64_t want = static_cast<int64_t>(jobs) * 6;
    int64_t have = 0;
    while ((have = pods.n) < want) {
      if (Since(t) > 1200) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    const double pods_seconds = Since(t);
    std::printf("created %d jobs in %.1f s; %lld/%lld pods existed %.1f s after the first job\n", jobs, create_seconds,
                static_cast<long long>(have), static_cast<long long>(want), pods_seconds);
    // Let the status writes settle, then report.
    std::this_thread::sleep_for(std::chrono::seconds(2));
    std::vector<double> samples;
    {
      std::lock_guard<std::mutex> lock(mu);
      samples = job_reconciles;
    }
    const long hwm = StatusKb("VmHWM:");
    std::printf("job reconciles: %zu, latency p50 %.1f ms, p99 %.1f ms, max %.1f ms\n", samples.size(),
                1e3 * Percentile(samples, 0.5), 1e3 * Percentile(samples, 0.99), 1e3 * Percentile(samples, 1.0));
    std::printf("memory: peak RSS %.1f MiB (%.1f MiB before the operator started)\n", hwm / 1024.0,
                rss_before / 1024.0);
    op.Stop();
    node_watch.Stop();
    pod_watch.Stop();
    return have == want ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hetermoe_operator_bench: error: %s\n", e.what());
    return 1;
  }
}
