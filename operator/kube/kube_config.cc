// Kubeconfig and in-cluster configuration: see kube_config.h.
#include "operator/kube/kube_config.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "common/error.h"

namespace hetermoe::op {

namespace fs = std::filesystem;

namespace {

std::string ReadFile(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(what + ": cannot read " + path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string Resolve(const std::string& base_dir, const std::string& path) {
  if (path.empty() || fs::path(path).is_absolute() || base_dir.empty()) return path;
  return (fs::path(base_dir) / path).string();
}

YAML::Node Named(const YAML::Node& list, const std::string& name, const std::string& kind, const std::string& source) {
  if (list && list.IsSequence())
    for (const auto& item : list)
      if (item["name"] && item["name"].as<std::string>() == name) return item[kind];
  throw Error(source + ": no " + kind + " named \"" + name + "\"");
}

// `data` key (base64) or file key.
std::string Pem(const YAML::Node& node, const char* data_key, const char* file_key, const std::string& base_dir,
                const std::string& source) {
  if (node[data_key]) return Base64Decode(node[data_key].as<std::string>());
  if (node[file_key]) return ReadFile(Resolve(base_dir, node[file_key].as<std::string>()), source + " " + file_key);
  return "";
}

}  // namespace

std::string Base64Decode(const std::string& text) {
  static const std::string kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  int bits = 0;
  uint32_t acc = 0;
  for (char c : text) {
    if (c == '=' || c == '\n' || c == '\r' || c == ' ') continue;
    size_t v = kAlphabet.find(c);
    if (v == std::string::npos) throw Error("base64: invalid character");
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return out;
}

KubeConfig ParseKubeConfig(const std::string& yaml_text, const std::string& base_dir, const std::string& source,
                           const std::string& context_name) {
  KubeConfig cfg;
  cfg.source = source;
  try {
    YAML::Node root = YAML::Load(yaml_text);
    std::string ctx_name = context_name;
    if (ctx_name.empty() && root["current-context"]) ctx_name = root["current-context"].as<std::string>();
    if (ctx_name.empty()) throw Error(source + ": no current-context");
    YAML::Node ctx = Named(root["contexts"], ctx_name, "context", source);
    std::string cluster_name = ctx["cluster"].as<std::string>();
    std::string user_name = ctx["user"] ? ctx["user"].as<std::string>() : "";
    if (ctx["namespace"]) cfg.default_namespace = ctx["namespace"].as<std::string>();
    YAML::Node cluster = Named(root["clusters"], cluster_name, "cluster", source);
    if (!cluster["server"]) throw Error(source + ": cluster \"" + cluster_name + "\" has no server");
    cfg.server = cluster["server"].as<std::string>();
    while (!cfg.server.empty() && cfg.server.back() == '/') cfg.server.pop_back();
    cfg.ca_pem = Pem(cluster, "certificate-authority-data", "certificate-authority", base_dir, source);
    if (!user_name.empty()) {
      YAML::Node user = Named(root["users"], user_name, "user", source);
      if (user["token"]) cfg.token = user["token"].as<std::string>();
      if (user["tokenFile"]) cfg.token_file = Resolve(base_dir, user["tokenFile"].as<std::string>());
      cfg.client_cert_pem = Pem(user, "client-certificate-data", "client-certificate", base_dir, source);
      cfg.client_key_pem = Pem(user, "client-key-data", "client-key", base_dir, source);
      if (cfg.client_cert_pem.empty() != cfg.client_key_pem.empty())
        throw Error(source + ": user \"" + user_name + "\" has a client certificate without a key, or a key without one");
    }
  } catch (const YAML::Exception& e) {
    throw Error(source + ": " + e.what());
  }
  if (cfg.server.rfind("https://", 0) == 0 && cfg.ca_pem.empty())
    throw Error(source + ": cluster has no certificate-authority (the operator only trusts the cluster CA)");
  return cfg;
}

KubeConfig LoadKubeConfig(const std::string& path, const std::string& context) {
  return ParseKubeConfig(ReadFile(path, "kubeconfig"), fs::path(path).parent_path().string(), path, context);
}

KubeConfig InClusterConfig(const std::string& root) {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (!host || !port) throw Error("in-cluster config: KUBERNETES_SERVICE_HOST/PORT are not set");
  const std::string dir = root + "/var/run/secrets/kubernetes.io/serviceaccount";
  KubeConfig cfg;
  std::string h = host;
  if (h.find(':') != std::string::npos) h = "[" + h + "]";  // IPv6
  cfg.server = "https://" + h + ":" + port;
  cfg.ca_pem = ReadFile(dir + "/ca.crt", "in-cluster config");
  cfg.token_file = dir + "/token";
  ReadFile(cfg.token_file, "in-cluster config");  // fail now, not at the first request
  std::ifstream ns(dir + "/namespace");
  if (ns) std::getline(ns, cfg.default_namespace);
  cfg.source = "in-cluster";
  return cfg;
}

KubeConfig ResolveKubeConfig(const std::string& flag) {
  if (!flag.empty()) return LoadKubeConfig(flag);
  if (const char* env = std::getenv("KUBECONFIG"); env && *env) {
    std::string first = env;
    first = first.substr(0, first.find(':'));
    return LoadKubeConfig(first);
  }
  if (std::getenv("KUBERNETES_SERVICE_HOST")) return InClusterConfig();
  const char* home = std::getenv("HOME");
  if (home && fs::exists(std::string(home) + "/.kube/config")) return LoadKubeConfig(std::string(home) + "/.kube/config");
  throw Error("no kubeconfig: pass --kubeconfig, set KUBECONFIG, or run in a cluster");
}

}  // namespace hetermoe::op
