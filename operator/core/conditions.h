// Job conditions: setting them (lastTransitionTime moves only when the
// status flips), reading them, and the one-word state summarised from them
// for `kubectl get hmj`. Pure.
#pragma once

#include <cstdint>
#include <string>

#include "operator/api/hetermoejob.h"

namespace hetermoe::op {

// Sets condition `type`; returns true if its status changed (or it is new).
bool SetCondition(JobStatus& status, const std::string& type, bool value, const std::string& reason,
                  const std::string& message, const std::string& now);
// Sets it only if it exists (a False condition is not added before it matters).
void ClearCondition(JobStatus& status, const std::string& type, const std::string& reason,
                    const std::string& message, const std::string& now);
bool IsTrue(const JobStatus& status, const std::string& type);
const Condition* FindCondition(const JobStatus& status, const std::string& type);
bool IsFinished(const JobStatus& status);  // Succeeded or Failed

// Failed > Succeeded > Suspended > Restarting > Running > Created > Pending.
std::string StateOf(const JobStatus& status);

// RFC 3339 UTC with seconds ("2025-05-20T10:00:00Z"), as Kubernetes writes it.
std::string FormatTime(int64_t unix_seconds);
// Parses what FormatTime writes (and fractional seconds / offsets); nullopt-like -1 on error.
int64_t ParseTime(const std::string& text);

}  // namespace hetermoe::op
