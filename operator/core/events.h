// The Kubernetes Events a reconcile reports on its HeterMoEJob, as
// client-go controllers do (`kubectl describe hmj` shows them): one per
// condition that turned True, with the condition's reason and message, plus
// one for the pods a reconcile created. Pure; the controller posts them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "operator/api/hetermoejob.h"

namespace hetermoe::op {

struct JobEvent {
  std::string type;  // Normal | Warning
  std::string reason;
  std::string message;
  bool operator==(const JobEvent&) const = default;
};

// Conditions True in `now` but not in `before` (Failed and Restarting are
// Warnings), and `created_pods` pods created by this reconcile.
std::vector<JobEvent> JobEvents(const JobStatus& before, const JobStatus& now, size_t created_pods);

// The core/v1 Event object for `event` on the job (unique name: job name +
// the time in nanoseconds in hex, as client-go names them).
nlohmann::json EventObject(const JobMeta& job, const JobEvent& event, const std::string& reporting_instance,
                           int64_t unix_nanos);

}  // namespace hetermoe::op
