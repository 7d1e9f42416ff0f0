// Logging for the operator's long-running loops: one line per event, as
// text ("2025-05-20T10:00:00Z INFO reconciled job=ns/a took=0.01") or JSON
// ({"ts":...,"level":...,"msg":...,...}), chosen once by the binary
// (--log-format). Thread-safe; writes to stderr.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace hetermoe::op {

enum class LogFormat { kText, kJson };
void SetLogFormat(LogFormat format);
void SetLogQuiet(bool quiet);  // tests: only errors

using LogFields = std::vector<std::pair<std::string, std::string>>;
void LogInfo(const std::string& message, const LogFields& fields = {});
void LogError(const std::string& message, const LogFields& fields = {});

}  // namespace hetermoe::op
