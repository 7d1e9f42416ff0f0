#include "operator/core/events.h"

#include <cstdio>

#include "operator/core/conditions.h"

namespace hetermoe::op {

std::vector<JobEvent> JobEvents(const JobStatus& before, const JobStatus& now, size_t created_pods) {
  std::vector<JobEvent> events;
  if (created_pods > 0)
    events.push_back({"Normal", "CreatedPods",
                      "Created " + std::to_string(created_pods) + " pod" + (created_pods == 1 ? "" : "s")});
  // A child the API server refused (quota, admission, RBAC): once per message.
  if (const Condition* c = FindCondition(now, kCondCreated); c && c->status == "False" && c->reason == "CreateFailed") {
    const Condition* b = FindCondition(before, kCondCreated);
    if (!b || b->reason != c->reason || b->message != c->message)
      events.push_back({"Warning", "FailedCreate", c->message});
  }
  for (const char* type : {kCondCreated, kCondRunning, kCondSuspended, kCondRestarting, kCondSucceeded, kCondFailed}) {
    if (!IsTrue(now, type) || IsTrue(before, type)) continue;
    const Condition* c = FindCondition(now, type);
    const bool warning = std::string(type) == kCondFailed || std::string(type) == kCondRestarting;
    events.push_back({warning ? "Warning" : "Normal", c->reason.empty() ? type : c->reason,
                      c->message.empty() ? std::string("Job is ") + type : c->message});
  }
  return events;
}

nlohmann::json EventObject(const JobMeta& job, const JobEvent& event, const std::string& reporting_instance,
                           int64_t unix_nanos) {
  char suffix[32];
  std::snprintf(suffix, sizeof suffix, ".%llx", static_cast<unsigned long long>(unix_nanos));
  const std::string when = FormatTime(unix_nanos / 1000000000);
  return {{"apiVersion", "v1"},
          {"kind", "Event"},
          {"metadata", {{"name", job.name + suffix}, {"namespace", job.namespace_}}},
          {"involvedObject",
           {{"apiVersion", "hetermoe.io/v1alpha1"},
            {"kind", "HeterMoEJob"},
            {"name", job.name},
            {"namespace", job.namespace_},
            {"uid", job.uid},
            {"resourceVersion", job.resource_version}}},
          {"type", event.type},
          {"reason", event.reason},
          {"message", event.message},
          {"source", {{"component", "hetermoe-operator"}}},
          {"reportingComponent", "hetermoe.io/operator"},
          {"reportingInstance", reporting_instance},
          {"firstTimestamp", when},
          {"lastTimestamp", when},
          {"count", 1}};
}

}  // namespace hetermoe::op
