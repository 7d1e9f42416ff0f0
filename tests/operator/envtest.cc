// Envtest: see envtest.h.
#include "envtest.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "common/error.h"
#include "operator/kube/resource.h"
#include "tests/support/loopback.h"
#include "yaml_json.h"

namespace hetermoe::op::envtest {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

void Run(const std::string& command) {
  if (std::system((command + " >/dev/null 2>&1").c_str()) != 0) throw Error("envtest: command failed: " + command);
}

pid_t Spawn(const std::vector<std::string>& argv, const std::string& log) {
  pid_t pid = fork();
  if (pid == 0) {
    // Never outlive the test process, however it ends.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    setpgid(0, 0);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

void Terminate(pid_t& pid) {
  if (pid <= 0) return;
  kill(pid, SIGTERM);
  for (int i = 0; i < 100; ++i) {
    if (waitpid(pid, nullptr, WNOHANG) == pid) {
      pid = -1;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  pid = -1;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string Tail(const std::string& path) {
  std::string text = ReadFile(path);
  return text.size() > 2000 ? text.substr(text.size() - 2000) : text;
}

}  // namespace

bool Eventually(const std::function<bool()>& check, double seconds) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  for (;;) {
    try {
      if (check()) return true;
    } catch (const std::exception&) {
      // Not yet (e.g. NotFound); keep polling.
    }
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

Envtest::~Envtest() { Stop(); }

KubeConfig Envtest::AdminConfig() const {
  KubeConfig c;
  c.server = "https://127.0.0.1:" + std::to_string(api_port_);
  c.ca_pem = ReadFile(dir_ + "/ca.crt");
  c.client_cert_pem = ReadFile(dir_ + "/admin.crt");
  c.client_key_pem = ReadFile(dir_ + "/admin.key");
  c.source = "envtest";
  return c;
}

void Envtest::Start() {
  const char* assets = std::getenv("KUBEBUILDER_ASSETS");
  if (!assets || !*assets)
    throw Error(
        "KUBEBUILDER_ASSETS is not set: the operator's integration tests need a kube-apiserver and etcd. "
        "Run: export KUBEBUILDER_ASSETS=$(tests/operator/setup-envtest.sh)");
  assets_ = assets;
  for (const char* bin : {"kube-apiserver", "etcd"})
    if (access((assets_ + "/" + bin).c_str(), X_OK) != 0)
      throw Error("KUBEBUILDER_ASSETS=" + assets_ + " has no executable " + bin +
                  " (tests/operator/setup-envtest.sh builds kube-apiserver and links Debian's etcd)");
  if (access("/usr/bin/openssl", X_OK) != 0) throw Error("envtest needs /usr/bin/openssl (apt package openssl)");

  const std::string base = fs::exists("/dev/shm") ? "/dev/shm" : fs::temp_directory_path().string();
  dir_ = base + "/hetermoe-envtest-" + std::to_string(getpid());
  fs::remove_all(dir_);
  fs::create_directories(dir_);
  const std::string d = dir_;
  // Certificates: a CA, the apiserver's serving pair, an admin client pair,
  // and the service-account signing key.
  Run("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=envtest-ca -keyout " + d + "/ca.key -out " + d + "/ca.crt");
  std::ofstream(d + "/serving.ext") << "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n";
  Run("openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout " + d + "/serving.key -out " + d + "/serving.csr");
  Run("openssl x509 -req -days 2 -in " + d + "/serving.csr -CA " + d + "/ca.crt -CAkey " + d +
      "/ca.key -CAcreateserial -extfile " + d + "/serving.ext -out " + d + "/serving.crt");
  std::ofstream(d + "/client.ext") << "extendedKeyUsage=clientAuth\n";
  Run("openssl req -newkey rsa:2048 -nodes -subj /O=system:masters/CN=envtest-admin -keyout " + d + "/admin.key -out " +
      d + "/admin.csr");
  Run("openssl x509 -req -days 2 -in " + d + "/admin.csr -CA " + d + "/ca.crt -CAkey " + d +
      "/ca.key -CAcreateserial -extfile " + d + "/client.ext -out " + d + "/admin.crt");
  Run("openssl genrsa -out " + d + "/sa.key 2048");
  Run("openssl rsa -in " + d + "/sa.key -pubout -out " + d + "/sa.pub");

  etcd_port_ = testing::FreeLoopbackPort();
  etcd_peer_port_ = testing::FreeLoopbackPort();
  api_port_ = testing::FreeLoopbackPort();
  const std::string etcd_url = "http://127.0.0.1:" + std::to_string(etcd_port_);
  etcd_pid_ = Spawn({assets_ + "/etcd", "--data-dir", d + "/etcd", "--listen-client-urls", etcd_url,
                     "--advertise-client-urls", etcd_url, "--listen-peer-urls",
                     "http://127.0.0.1:" + std::to_string(etcd_peer_port_), "--initial-advertise-peer-urls",
                     "http://127.0.0.1:" + std::to_string(etcd_peer_port_), "--initial-cluster",
                     "default=http://127.0.0.1:" + std::to_string(etcd_peer_port_), "--name", "default"},
                    d + "/etcd.log");

  std::ofstream(d + "/kubeconfig") << "apiVersion: v1\nkind: Config\ncurrent-context: envtest\n"
                                   << "clusters:\n- name: envtest\n  cluster:\n    server: https://127.0.0.1:"
                                   << api_port_ << "\n    certificate-authority: ca.crt\n"
                                   << "users:\n- name: admin\n  user:\n    client-certificate: admin.crt\n"
                                   << "    client-key: admin.key\n"
                                   << "contexts:\n- name: envtest\n  context: {cluster: envtest, user: admin}\n";
  kubeconfig_ = d + "/kubeconfig";
  StartApiserver();

  // The CRD, served before the tests begin.
  json crd = fixtures::LoadYamlDocuments(std::string(HETERMOE_SOURCE_DIR) + "/crds/hetermoe.io_hetermoejobs.yaml").at(0);
  client_->Create(kCrds.Path(), crd);
  bool served = Eventually(
      [&] {
        json c = client_->Get(kCrds.Path("", "hetermoejobs.hetermoe.io"));
        bool established = false;
        for (const json& cond : c["status"].value("conditions", json::array()))
          if (cond["type"] == "Established" && cond["status"] == "True") established = true;
        if (!established) return false;
        client_->List(kHeterMoEJobs.Path("default"));
        return true;
      },
      30);
  if (!served) throw Error("envtest: the HeterMoEJob CRD was not served within 30 s");
}

void Envtest::StartApiserver() {
  const std::string d = dir_;
  const std::string port = std::to_string(api_port_);
  api_pid_ = Spawn({assets_ + "/kube-apiserver",
                    "--etcd-servers=http://127.0.0.1:" + std::to_string(etcd_port_),
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    "--secure-port=" + port,
                    "--insecure-port=0",
                    "--cert-dir=" + d,
                    "--tls-cert-file=" + d + "/serving.crt",
                    "--tls-private-key-file=" + d + "/serving.key",
                    "--client-ca-file=" + d + "/ca.crt",
                    "--authorization-mode=RBAC",
                    "--service-account-issuer=https://127.0.0.1:" + port,
                    "--service-account-key-file=" + d + "/sa.pub",
                    "--service-account-signing-key-file=" + d + "/sa.key",
                    "--service-cluster-ip-range=10.0.0.0/24",
                    "--allow-privileged=true",
                    // No controller-manager creates the default ServiceAccount, and no
                    // node controller lifts the not-ready taint from new nodes.
                    "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition",
                    "--enable-priority-and-fairness=false",
                    "--endpoint-reconciler-type=none"},
                   d + "/kube-apiserver.log");
  ClientOptions fast;  // the tests' own requests are not the operator's to throttle
  fast.qps = 1000;
  fast.burst = 1000;
  client_ = std::make_unique<KubeClient>(AdminConfig(), fast);
  WaitReady(90);
}

void Envtest::WaitReady(double seconds) {
  std::string last_error;
  bool ready = Eventually(
      [&] {
        if (api_pid_ > 0 && waitpid(api_pid_, nullptr, WNOHANG) == api_pid_) {
          api_pid_ = -1;
          last_error = "kube-apiserver exited";
          return true;
        }
        try {
          client_->Get("/version");
          client_->Get(kNamespaces.Path("", "default"));
        } catch (const std::exception& e) {
          last_error = e.what();
          return false;
        }
        last_error.clear();
        return true;
      },
      seconds);
  if (!ready || !last_error.empty())
    throw Error("envtest: kube-apiserver was not ready within " + std::to_string(static_cast<int>(seconds)) +
                " s (last error: " + last_error + "); its log ends:\n" + Tail(dir_ + "/kube-apiserver.log"));
}

void Envtest::StopApiserver() { Terminate(api_pid_); }

std::string Envtest::EtcdPost(const std::string& path, const std::string& body) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(etcd_port_));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    throw Error("envtest: cannot reach etcd");
  }
  std::string request = "POST " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  send(fd, request.data(), request.size(), 0);
  std::string response;
  char buf[4096];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof buf, 0)) > 0) response.append(buf, static_cast<size_t>(n));
  close(fd);
  size_t at = response.find("\r\n\r\n");
  return at == std::string::npos ? "" : response.substr(at + 4);
}

int64_t Envtest::CompactEtcd() {
  // etcd's JSON gateway: keys are base64 ("Lw==" is "/").
  json range = json::parse(EtcdPost("/v3/kv/range", R"({"key":"Lw==","limit":1})"));
  int64_t revision = std::stoll(range["header"]["revision"].get<std::string>());
  EtcdPost("/v3/kv/compaction", json{{"revision", std::to_string(revision)}, {"physical", true}}.dump());
  return revision;
}

void Envtest::Stop() {
  client_.reset();
  Terminate(api_pid_);
  Terminate(etcd_pid_);
  if (!dir_.empty() && !std::getenv("HETERMOE_ENVTEST_KEEP")) fs::remove_all(dir_);
  dir_.clear();
}

Envtest& Shared() {
  static Envtest* env = [] {
    auto* e = new Envtest();
    try {
      e->Start();
    } catch (...) {
      e->Stop();  // no half-started etcd or apiserver left behind
      delete e;
      throw;
    }
    std::atexit([] { Shared().Stop(); });
    return e;
  }();
  return *env;
}

}  // namespace hetermoe::op::envtest
