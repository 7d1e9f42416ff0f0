// Kubeconfig and in-cluster configuration: contexts, inline and file PEMs,
// relative paths, tokens, and the errors that name what is missing.
#include "operator/kube/kube_config.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "common/error.h"

namespace hetermoe::op {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() : path_(fs::temp_directory_path() / ("hetermoe-kc-" + std::to_string(::getpid()) + "-" +
                                                 std::to_string(counter_++))) {
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string Write(const std::string& name, const std::string& text) const {
    fs::create_directories((path_ / name).parent_path());
    std::ofstream(path_ / name) << text;
    return (path_ / name).string();
  }
  std::string path() const { return path_.string(); }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

const char* kTwoContexts = R"(
apiVersion: v1
kind: Config
current-context: dev
clusters:
- name: prod
  cluster: {server: "https://prod:6443", certificate-authority: certs/ca.crt}
- name: dev
  cluster: {server: "https://127.0.0.1:6443/", certificate-authority-data: Q0EtUEVN}
users:
- name: admin
  user: {client-certificate-data: Q0VSVA==, client-key-data: S0VZ}
- name: robot
  user: {token: sekret}
contexts:
- name: dev
  context: {cluster: dev, user: admin, namespace: team-a}
- name: prod
  context: {cluster: prod, user: robot}
)";

TEST(KubeConfig, CurrentContextWithInlineData) {
  KubeConfig c = ParseKubeConfig(kTwoContexts, "/nowhere", "test");
  EXPECT_EQ(c.server, "https://127.0.0.1:6443");
  EXPECT_EQ(c.ca_pem, "CA-PEM");
  EXPECT_EQ(c.client_cert_pem, "CERT");
  EXPECT_EQ(c.client_key_pem, "KEY");
  EXPECT_EQ(c.default_namespace, "team-a");
}

TEST(KubeConfig, NamedContextWithFilesRelativeToTheKubeconfig) {
  TempDir dir;
  dir.Write("certs/ca.crt", "FILE-CA");
  std::string path = dir.Write("config", kTwoContexts);
  KubeConfig c = LoadKubeConfig(path, "prod");
  EXPECT_EQ(c.server, "https://prod:6443");
  EXPECT_EQ(c.ca_pem, "FILE-CA");
  EXPECT_EQ(c.token, "sekret");
  EXPECT_EQ(c.default_namespace, "default");
}

TEST(KubeConfig, ErrorsNameTheProblem) {
  auto message = [](const std::string& yaml) {
    try {
      ParseKubeConfig(yaml, "", "kc");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("clusters: []").find("no current-context"), std::string::npos);
  EXPECT_NE(message("current-context: x\ncontexts: []").find("no context named \"x\""), std::string::npos);
  EXPECT_NE(message("current-context: x\ncontexts: [{name: x, context: {cluster: c}}]\n"
                    "clusters: [{name: c, cluster: {server: 'https://h'}}]")
                .find("only trusts the cluster CA"),
            std::string::npos);
  EXPECT_NE(message("current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
                    "clusters: [{name: c, cluster: {server: 'https://h', certificate-authority-data: QQ==}}]\n"
                    "users: [{name: u, user: {client-certificate-data: QQ==}}]")
                .find("without a key"),
            std::string::npos);
}

TEST(KubeConfig, InCluster) {
  TempDir root;
  root.Write("var/run/secrets/kubernetes.io/serviceaccount/ca.crt", "SA-CA");
  root.Write("var/run/secrets/kubernetes.io/serviceaccount/token", "tok");
  root.Write("var/run/secrets/kubernetes.io/serviceaccount/namespace", "ops");
  setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1", 1);
  setenv("KUBERNETES_SERVICE_PORT", "443", 1);
  KubeConfig c = InClusterConfig(root.path());
  EXPECT_EQ(c.server, "https://10.0.0.1:443");
  EXPECT_EQ(c.ca_pem, "SA-CA");
  EXPECT_EQ(c.token_file, root.path() + "/var/run/secrets/kubernetes.io/serviceaccount/token");
  EXPECT_EQ(c.default_namespace, "ops");
  setenv("KUBERNETES_SERVICE_HOST", "fd00::1", 1);
  EXPECT_EQ(InClusterConfig(root.path()).server, "https://[fd00::1]:443");
  unsetenv("KUBERNETES_SERVICE_HOST");
  EXPECT_THROW(InClusterConfig(root.path()), Error);
}

TEST(Base64, Decodes) {
  EXPECT_EQ(Base64Decode("aGVsbG8="), "hello");
  EXPECT_EQ(Base64Decode("aGVs\nbG8gd29ybGQ="), "hello world");
  EXPECT_THROW(Base64Decode("a*b"), Error);
}

}  // namespace
}  // namespace hetermoe::op
