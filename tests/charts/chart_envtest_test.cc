// The Helm chart (charts/hetermoe-operator) checked with Helm's own binary
// and a real kube-apiserver (tests/operator/envtest.h):
//   - `helm lint --strict`, and values.schema.json refusing bad values;
//   - every rendered manifest accepted by the apiserver (server-side dry
//     run, so the real API schemas judge them), the Deployment's pod
//     hardened (non-root, no privilege escalation, no capabilities,
//     read-only root, RuntimeDefault seccomp);
//   - the RBAC, applied for real: `kubectl auth can-i` as the operator's
//     ServiceAccount allows every call the operator makes and refuses what
//     it does not need (Secrets, changing Events, updating pods, deleting nodes,
//     Leases outside its namespace, other namespaces when watchNamespace is
//     set);
//   - the operator binary itself, running with a token of the chart's
//     ServiceAccount (and nothing else), labels GPU nodes, runs a job to its
//     pods, status and Events, and holds its Lease, with no request refused;
//   - the PodMonitor scraping the port the operator gives trainer pods.
// helm and kubectl come from $HETERMOE_HELM_DIR (tests/charts/setup-helm.sh).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/operator/envtest.h"
#include "tests/operator/test_jobs.h"

namespace hetermoe::op {
namespace {

using nlohmann::json;

const std::string kChart = std::string(HETERMOE_SOURCE_DIR) + "/charts/hetermoe-operator";

struct Result {
  int code;
  std::string out;  // stdout and stderr
};

Result Shell(const std::string& command) {
  FILE* p = ::popen(("{ " + command + "; } 2>&1").c_str(), "r");  // stderr too, not into redirections
  if (!p) return {-1, "popen failed"};
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = ::pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

std::string Tool(const std::string& name) {
  const char* dir = std::getenv("HETERMOE_HELM_DIR");
  if (!dir || !*dir)
    throw std::runtime_error("HETERMOE_HELM_DIR is not set: run HETERMOE_HELM_DIR=\"$(tests/charts/setup-helm.sh)\"");
  return std::string(dir) + "/" + name;
}

std::string Kubectl() { return Tool("kubectl") + " --kubeconfig " + envtest::Shared().kubeconfig_path(); }

// helm template into a file; returns its path.
std::string Render(const std::string& release, const std::string& ns, const std::string& sets) {
  const std::string out = envtest::Shared().dir() + "/" + release + ".yaml";
  const Result r = Shell(Tool("helm") + " template " + release + " " + kChart + " --namespace " + ns + " " + sets +
                       " > " + out);
  EXPECT_EQ(r.code, 0) << r.out;
  return out;
}

void EnsureNamespace(const std::string& ns) {
  Shell(Kubectl() + " create namespace " + ns);  // AlreadyExists is fine
}

// `kubectl auth can-i` as the ServiceAccount (its output kept for messages).
std::string last_can_i;
// A resource "pods/exec" means the subresource (kubectl would read TYPE/NAME).
bool CanI(const std::string& sa, const std::string& verb, const std::string& resource, const std::string& ns) {
  const size_t slash = resource.find('/');
  const std::string type = resource.substr(0, slash);
  const std::string sub = slash == std::string::npos ? "" : " --subresource=" + resource.substr(slash + 1);
  const Result r = Shell(Kubectl() + " auth can-i " + verb + " " + type + sub + " --as=system:serviceaccount:" + sa +
                         (ns.empty() ? " --all-namespaces" : " -n " + ns));
  last_can_i = r.out;
  return r.code == 0;  // 0 = yes, 1 = no
}

TEST(Chart, LintsAndTheSchemaRefusesBadValues) {
  const Result lint = Shell(Tool("helm") + " lint --strict " + kChart);
  EXPECT_EQ(lint.code, 0) << lint.out;
  struct Bad {
    std::string sets, expect;
  };
  for (const Bad& b : {Bad{"--set workers=0", "workers"}, Bad{"--set logFormat=xml", "logFormat"},
                       Bad{"--set image.pullPolicy=Sometimes", "pullPolicy"},
                       Bad{"--set attentionMinComputeCapability=eight", "attentionMinComputeCapability"},
                       Bad{"--set replicas=2", "replicas"},
                       Bad{"--set replicaCount=2 --set leaderElection.enabled=false", "leaderElection"}}) {
    const Result r = Shell(Tool("helm") + " template x " + kChart + " " + b.sets);
    EXPECT_NE(r.code, 0) << b.sets << " was accepted";
    EXPECT_NE(r.out.find(b.expect), std::string::npos) << b.sets << ": " << r.out;
  }
}

TEST(Chart, ManifestsPassTheApiserverAndThePodIsHardened) {
  const std::string ns = "chart-dry";
  EnsureNamespace(ns);
  const std::string file = Render("dry", ns, "--set replicaCount=2");
  const Result r = Shell(Kubectl() + " apply --dry-run=server -o json -f " + file);
  ASSERT_EQ(r.code, 0) << r.out;
  const json list = json::parse(r.out.substr(r.out.find('{')));
  std::map<std::string, int> kinds;
  json deployment;
  for (const json& o : list["items"]) {
    ++kinds[o["kind"].get<std::string>()];
    if (o["kind"] == "Deployment") deployment = o;
  }
  EXPECT_EQ(kinds["Deployment"], 1);
  EXPECT_EQ(kinds["ServiceAccount"], 1);
  EXPECT_EQ(kinds["Service"], 1);
  EXPECT_EQ(kinds["ClusterRole"], 2);
  EXPECT_EQ(kinds["Role"], 1) << "the leader-election Role";
  EXPECT_EQ(kinds["ConfigMap"], 2) << "two Grafana dashboards";
  ASSERT_FALSE(deployment.is_null());
  const json& pod = deployment["spec"]["template"]["spec"];
  EXPECT_EQ(pod["securityContext"]["runAsNonRoot"], true);
  EXPECT_EQ(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
  const json& c = pod["containers"][0];
  EXPECT_EQ(c["securityContext"]["allowPrivilegeEscalation"], false);
  EXPECT_EQ(c["securityContext"]["readOnlyRootFilesystem"], true);
  EXPECT_EQ(c["securityContext"]["capabilities"]["drop"], json::array({"ALL"}));
  const std::string args = c["args"].dump();
  EXPECT_NE(args.find("--leader-elect"), std::string::npos) << args;
  EXPECT_NE(args.find("--leader-election-namespace=" + ns), std::string::npos) << args;
  EXPECT_EQ(c["readinessProbe"]["httpGet"]["path"], "/readyz");
  EXPECT_EQ(c["livenessProbe"]["httpGet"]["path"], "/healthz");

  // The CRD ships in the chart's crds/ (helm installs it before the templates).
  const Result crds = Shell(Tool("helm") + " show crds " + kChart);
  EXPECT_NE(crds.out.find("name: hetermoejobs.hetermoe.io"), std::string::npos) << crds.out.substr(0, 500);
}

TEST(Chart, RbacAllowsWhatTheOperatorCallsAndNothingElse) {
  const std::string ns = "chart-rbac";
  EnsureNamespace(ns);
  EnsureNamespace("team-a");
  // Volcano's PodGroup kind, so that kubectl can resolve it (a minimal CRD).
  const std::string podgroup_crd = envtest::Shared().dir() + "/podgroup-crd.yaml";
  std::ofstream(podgroup_crd) << R"(apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: podgroups.scheduling.volcano.sh}
spec:
  group: scheduling.volcano.sh
  scope: Namespaced
  names: {plural: podgroups, singular: podgroup, kind: PodGroup}
  versions:
    - name: v1beta1
      served: true
      storage: true
      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
)";
  const Result crd = Shell(Kubectl() + " apply -f " + podgroup_crd);
  ASSERT_EQ(crd.code, 0) << crd.out;
  ASSERT_TRUE(envtest::Eventually([&] { return Shell(Kubectl() + " get podgroups -A").code == 0; }));
  const std::string file = Render("op", ns, "--set scheduling.volcano.enabled=true");
  const Result r = Shell(Kubectl() + " apply -f " + file);
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string sa = ns + ":op-hetermoe-operator";
  struct Check {
    std::string verb, resource, ns;
  };
  // What operator/controller/ calls: informers (list/watch) on jobs, pods,
  // services, configmaps and nodes; status patches; server-side apply of
  // Services, ConfigMaps and PodGroups; pod create/delete; TTL deletion of
  // jobs; node label patches; the leader Lease.
  for (const Check& c : {Check{"list", "hetermoejobs.hetermoe.io", ""}, Check{"watch", "hetermoejobs.hetermoe.io", ""},
                         Check{"patch", "hetermoejobs.hetermoe.io", "team-a"},
                         Check{"patch", "hetermoejobs.hetermoe.io/status", "team-a"},
                         Check{"delete", "hetermoejobs.hetermoe.io", "team-a"}, Check{"create", "pods", "team-a"},
                         Check{"delete", "pods", "team-a"}, Check{"watch", "pods", ""},
                         Check{"patch", "services", "team-a"}, Check{"create", "configmaps", "team-a"},
                         Check{"patch", "configmaps", "team-a"}, Check{"patch", "nodes", ""},
                         Check{"watch", "nodes", ""}, Check{"create", "podgroups.scheduling.volcano.sh", "team-a"},
                         Check{"create", "events", "team-a"},
                         Check{"update", "leases.coordination.k8s.io", ns},
                         Check{"create", "leases.coordination.k8s.io", ns}})
    EXPECT_TRUE(CanI(sa, c.verb, c.resource, c.ns)) << "the operator needs " << c.verb << " " << c.resource << " in "
                                                    << (c.ns.empty() ? "all namespaces" : c.ns) << ": " << last_can_i;
  for (const Check& c : {Check{"get", "secrets", "team-a"}, Check{"list", "secrets", ""},
                         Check{"update", "events", "team-a"}, Check{"update", "pods", "team-a"},
                         Check{"delete", "nodes", ""}, Check{"create", "hetermoejobs.hetermoe.io", "team-a"},
                         Check{"update", "leases.coordination.k8s.io", "team-a"},
                         Check{"create", "clusterroles.rbac.authorization.k8s.io", ""},
                         Check{"create", "pods/exec", "team-a"}, Check{"patch", "pods/status", "team-a"},
                         Check{"update", "hetermoejobs.hetermoe.io", "team-a"},
                         Check{"delete", "namespaces", ""}})
    EXPECT_FALSE(CanI(sa, c.verb, c.resource, c.ns)) << "the operator must not " << c.verb << " " << c.resource << ": " << last_can_i;

  // watchNamespace: the job permissions shrink to that namespace.
  const std::string scoped_ns = "chart-scoped";
  EnsureNamespace(scoped_ns);
  const std::string scoped = Render("sc", scoped_ns, "--set watchNamespace=team-a");
  const Result applied = Shell(Kubectl() + " apply -f " + scoped);
  ASSERT_EQ(applied.code, 0) << applied.out;
  const std::string sa2 = scoped_ns + ":sc-hetermoe-operator";
  EXPECT_TRUE(CanI(sa2, "create", "pods", "team-a"));
  EXPECT_TRUE(CanI(sa2, "watch", "hetermoejobs.hetermoe.io", "team-a"));
  EXPECT_FALSE(CanI(sa2, "create", "pods", "default"));
  EXPECT_FALSE(CanI(sa2, "list", "hetermoejobs.hetermoe.io", "")) << "cluster-wide list with watchNamespace set";
  EXPECT_TRUE(CanI(sa2, "patch", "nodes", "")) << "nodes are labelled cluster-wide";
}

TEST(Chart, TheOperatorWorksWithOnlyTheChartsPermissions) {
  const std::string ns = "chart-e2e", jobs_ns = "team-e2e";
  EnsureNamespace(ns);
  EnsureNamespace(jobs_ns);
  const Result applied = Shell(Kubectl() + " apply -f " + Render("e2e", ns, ""));
  ASSERT_EQ(applied.code, 0) << applied.out;
  // A token for the chart's ServiceAccount, and a kubeconfig holding only it.
  const Result token = Shell(Kubectl() + " create token e2e-hetermoe-operator -n " + ns + " --duration=1h");
  ASSERT_EQ(token.code, 0) << token.out;
  const std::string dir = envtest::Shared().dir();
  const std::string kubeconfig = dir + "/operator-sa.kubeconfig";
  {
    const Result server = Shell(Kubectl() + " config view -o jsonpath='{.clusters[0].cluster.server}'");
    std::ofstream(kubeconfig) << "apiVersion: v1\nkind: Config\ncurrent-context: sa\n"
                              << "clusters:\n- name: envtest\n  cluster:\n    server: " << server.out
                              << "\n    certificate-authority: " << dir << "/ca.crt\n"
                              << "users:\n- name: sa\n  user:\n    token: " << token.out.substr(0, token.out.find('\n'))
                              << "\ncontexts:\n- name: sa\n  context: {cluster: envtest, user: sa}\n";
  }
  const std::string log = dir + "/operator-sa.log";
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    execl(HETERMOE_OPERATOR_BINARY, HETERMOE_OPERATOR_BINARY, "--kubeconfig", kubeconfig.c_str(),
          "--metrics-bind-address", "0", "--health-probe-bind-address", "0", "--leader-elect",
          "--leader-election-namespace", ns.c_str(), "--log-format", "json", static_cast<char*>(nullptr));
    _exit(127);
  }
  // GPU nodes and a job, created as the admin.
  for (auto [name, product, major, minor] : {std::tuple{"e2e-a40", "NVIDIA-A40", 8, 6},
                                             std::tuple{"e2e-v100", "Tesla-V100-SXM2-32GB", 7, 0}}) {
    json node = fixtures::GpuNodeJson(name, product, major, minor, 4);
    node["apiVersion"] = "v1";
    node["kind"] = "Node";
    std::ofstream(dir + "/" + name + ".json") << node.dump();
    const Result r = Shell(Kubectl() + " apply -f " + dir + "/" + name + ".json");
    ASSERT_EQ(r.code, 0) << r.out;
  }
  json job = fixtures::TinyJobJson("e2e", jobs_ns);
  for (const char* server_set : {"uid", "resourceVersion", "creationTimestamp", "generation"})
    job["metadata"].erase(server_set);
  std::ofstream(dir + "/e2e-job.json") << job.dump();
  const Result created = Shell(Kubectl() + " apply -f " + dir + "/e2e-job.json");
  ASSERT_EQ(created.code, 0) << created.out;

  auto output = [&](const std::string& args) { return Shell(Kubectl() + " " + args).out; };
  EXPECT_TRUE(envtest::Eventually(
      [&] { return output("get node e2e-v100 -o jsonpath='{.metadata.labels.hetermoe\\.io/gpu-tier}'") == "expert"; },
      30))
      << "node labels: " << output("get node e2e-v100 -o jsonpath='{.metadata.labels}'");
  EXPECT_TRUE(envtest::Eventually(
      [&] { return output("get pods -n " + jobs_ns + " -l hetermoe.io/job-name=e2e -o name").find("e2e-expert-3") != std::string::npos; },
      30))
      << output("get pods -n " + jobs_ns);
  EXPECT_TRUE(envtest::Eventually(
      [&] { return output("get hetermoejob e2e -n " + jobs_ns + " -o jsonpath='{.status.conditions[*].type}'").find("Created") != std::string::npos; },
      30))
      << output("get hetermoejob e2e -n " + jobs_ns + " -o json");
  EXPECT_EQ(Shell(Kubectl() + " get leases -n " + ns + " -o name").out.empty(), false) << "no Lease in " << ns;
  // Events on the job, as `kubectl describe hmj` shows them.
  EXPECT_TRUE(envtest::Eventually(
      [&] {
        const std::string reasons =
            output("get events -n " + jobs_ns + " --field-selector involvedObject.name=e2e -o jsonpath='{.items[*].reason}'");
        return reasons.find("CreatedPods") != std::string::npos && reasons.find("Created") != std::string::npos;
      },
      20))
      << output("get events -n " + jobs_ns);
  kill(pid, SIGTERM);
  int status = 0;
  EXPECT_TRUE(envtest::Eventually([&] { return waitpid(pid, &status, WNOHANG) == pid; }, 20));
  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text.find("forbidden"), std::string::npos) << "a request was refused:\n" << text.substr(0, 4000);
  EXPECT_EQ(text.find("403"), std::string::npos) << text.substr(0, 4000);
}

TEST(Chart, PodMonitorScrapesThePortTrainerPodsExpose) {
  const std::string file = Render("pm", "monitoring", "--set trainerMetrics.podMonitor.enabled=true "
                                                      "--set metrics.serviceMonitor.enabled=true "
                                                      "--set trainerMetrics.podMonitor.additionalLabels.release=kps");
  std::ifstream in(file);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("kind: PodMonitor"), std::string::npos);
  EXPECT_NE(text.find("kind: ServiceMonitor"), std::string::npos);
  EXPECT_NE(text.find("release: kps"), std::string::npos);
  EXPECT_NE(text.find("key: hetermoe.io/job-name"), std::string::npos);
  // The operator names the trainer's metrics port "metrics" (operator/core/children.cc,
  // checked by the golden pod JSON of the operator tests).
  std::ifstream golden(std::string(HETERMOE_SOURCE_DIR) + "/tests/operator/golden/tiny-attention-0.json");
  const std::string pod((std::istreambuf_iterator<char>(golden)), std::istreambuf_iterator<char>());
  ASSERT_FALSE(pod.empty()) << "tests/operator/golden/tiny-attention-0.json";
  const json p = json::parse(pod);
  bool found = false;
  for (const json& port : p["spec"]["containers"][0]["ports"]) found = found || port["name"] == "metrics";
  EXPECT_TRUE(found) << "trainer pods expose no port named metrics";
  EXPECT_NE(text.find("- port: metrics"), std::string::npos);
  for (const char* label : {"targetLabel: hetermoe_job", "targetLabel: role", "targetLabel: rank", "targetLabel: node"})
    EXPECT_NE(text.find(label), std::string::npos) << label;
}

}  // namespace
}  // namespace hetermoe::op
