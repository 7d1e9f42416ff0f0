// Where the apiserver is and how to prove who we are: from a kubeconfig file
// or from the pod's service account (in-cluster), as client-go does.
//
// Kubeconfig: the current context's cluster (server, certificate-authority
// or -data) and user (token or tokenFile, client-certificate/-key or -data).
// File paths are relative to the kubeconfig's folder. In-cluster:
// KUBERNETES_SERVICE_HOST/PORT, the token and ca.crt under
// /var/run/secrets/kubernetes.io/serviceaccount/ (the token file is re-read
// by the client, because projected tokens rotate).
//
// PEM material is loaded into memory here; the REST client trusts the
// cluster CA only. Throws hetermoe::Error naming the file and key.
#pragma once

#include <string>

namespace hetermoe::op {

struct KubeConfig {
  std::string server;           // https://host:port
  std::string ca_pem;           // cluster CA (required for https)
  std::string token;            // static bearer token
  std::string token_file;       // re-read on use (in-cluster); wins over token
  std::string client_cert_pem;
  std::string client_key_pem;
  std::string default_namespace = "default";
  std::string source;           // where it came from, for messages
};

KubeConfig LoadKubeConfig(const std::string& path, const std::string& context = "");
KubeConfig ParseKubeConfig(const std::string& yaml_text, const std::string& base_dir, const std::string& source,
                           const std::string& context = "");
// `root` replaces "/" for tests (the service-account folder is looked up under it).
KubeConfig InClusterConfig(const std::string& root = "");
// --kubeconfig if given, else $KUBECONFIG, else in-cluster, else ~/.kube/config.
KubeConfig ResolveKubeConfig(const std::string& flag);

std::string Base64Decode(const std::string& text);

}  // namespace hetermoe::op
