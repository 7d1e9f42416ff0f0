// Operator logging: see log.h.
#include "operator/machinery/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>

#include <nlohmann/json.hpp>

#include "operator/core/conditions.h"

namespace hetermoe::op {

namespace {
std::atomic<LogFormat> g_format{LogFormat::kText};
std::atomic<bool> g_quiet{false};
std::mutex g_mu;

void Write(const char* level, const std::string& message, const LogFields& fields) {
  auto now = std::chrono::system_clock::now();
  const std::string ts = FormatTime(std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count());
  std::string line;
  if (g_format == LogFormat::kJson) {
    nlohmann::json j = {{"ts", ts}, {"level", level}, {"msg", message}};
    for (const auto& [k, v] : fields) j[k] = v;
    line = j.dump();
  } else {
    line = ts + " " + level + " " + message;
    for (const auto& [k, v] : fields) line += " " + k + "=" + (v.find(' ') == std::string::npos ? v : "\"" + v + "\"");
  }
  std::lock_guard<std::mutex> lock(g_mu);
  std::fprintf(stderr, "%s\n", line.c_str());
}
}  // namespace

void SetLogFormat(LogFormat format) { g_format = format; }
void SetLogQuiet(bool quiet) { g_quiet = quiet; }
void LogInfo(const std::string& message, const LogFields& fields) {
  if (!g_quiet) Write("INFO", message, fields);
}
void LogError(const std::string& message, const LogFields& fields) { Write("ERROR", message, fields); }

}  // namespace hetermoe::op
