// Resource: where a kind lives in the REST API, and the paths built from it
// (/api/v1/namespaces/ns/pods/name/status, /apis/group/version/plural, ...).
#pragma once

#include <string>

namespace hetermoe::op {

struct Resource {
  std::string group;    // "" for the core group
  std::string version;  // v1
  std::string plural;   // pods
  bool namespaced = true;

  std::string ApiVersion() const { return group.empty() ? version : group + "/" + version; }
  // Collection path; `ns` empty = all namespaces (or cluster-scoped).
  std::string Path(const std::string& ns = "", const std::string& name = "", const std::string& subresource = "") const {
    std::string p = group.empty() ? "/api/" + version : "/apis/" + group + "/" + version;
    if (namespaced && !ns.empty()) p += "/namespaces/" + ns;
    p += "/" + plural;
    if (!name.empty()) p += "/" + name;
    if (!subresource.empty()) p += "/" + subresource;
    return p;
  }
};

inline const Resource kPods{"", "v1", "pods", true};
inline const Resource kNodes{"", "v1", "nodes", false};
inline const Resource kServices{"", "v1", "services", true};
inline const Resource kConfigMaps{"", "v1", "configmaps", true};
inline const Resource kNamespaces{"", "v1", "namespaces", false};
inline const Resource kLeases{"coordination.k8s.io", "v1", "leases", true};
inline const Resource kHeterMoEJobs{"hetermoe.io", "v1alpha1", "hetermoejobs", true};
inline const Resource kPodGroups{"scheduling.volcano.sh", "v1beta1", "podgroups", true};
inline const Resource kEvents{"", "v1", "events", true};
inline const Resource kCrds{"apiextensions.k8s.io", "v1", "customresourcedefinitions", false};

}  // namespace hetermoe::op
