// What the policies share: see policy.h.
#include "operator/core/policies/policy.h"

#include <string>

namespace hetermoe::op {

int64_t CurrentAttempt(const JobObservation& observed) { return observed.job.status.restarts; }

bool IsActive(const ObservedPod& p) {
  return !p.deleting && (p.phase == "Pending" || p.phase == "Running" || p.phase.empty());
}

std::optional<int64_t> IntLabel(const nlohmann::json& labels, const char* key) {
  if (!labels.contains(key) || !labels[key].is_string()) return std::nullopt;
  try {
    size_t used = 0;
    const std::string s = labels[key].get<std::string>();
    int64_t v = std::stoll(s, &used);
    if (used != s.size()) return std::nullopt;
    return v;
  } catch (...) {
    return std::nullopt;
  }
}

}  // namespace hetermoe::op
