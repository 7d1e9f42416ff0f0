// Job conditions and state: see conditions.h.
#include "operator/core/conditions.h"

#include <cctype>
#include <ctime>
#include <cstdio>

namespace hetermoe::op {

const Condition* FindCondition(const JobStatus& status, const std::string& type) {
  for (const Condition& c : status.conditions)
    if (c.type == type) return &c;
  return nullptr;
}

bool SetCondition(JobStatus& status, const std::string& type, bool value, const std::string& reason,
                  const std::string& message, const std::string& now) {
  const std::string s = value ? "True" : "False";
  for (Condition& c : status.conditions) {
    if (c.type != type) continue;
    bool flipped = c.status != s;
    if (flipped) c.last_transition_time = now;
    c.status = s;
    c.reason = reason;
    c.message = message;
    return flipped;
  }
  status.conditions.push_back(Condition{type, s, reason, message, now});
  return true;
}

void ClearCondition(JobStatus& status, const std::string& type, const std::string& reason,
                    const std::string& message, const std::string& now) {
  if (FindCondition(status, type)) SetCondition(status, type, false, reason, message, now);
}

bool IsTrue(const JobStatus& status, const std::string& type) {
  const Condition* c = FindCondition(status, type);
  return c && c->status == "True";
}

bool IsFinished(const JobStatus& status) { return IsTrue(status, kCondSucceeded) || IsTrue(status, kCondFailed); }

std::string StateOf(const JobStatus& status) {
  for (const char* type : {kCondFailed, kCondSucceeded, kCondSuspended, kCondRestarting, kCondRunning, kCondCreated})
    if (IsTrue(status, type)) return type;
  return "Pending";
}

std::string FormatTime(int64_t unix_seconds) {
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

int64_t ParseTime(const std::string& text) {
  int y, mo, d, h, mi, s;
  if (std::sscanf(text.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d", &y, &mo, &d, &h, &mi, &s) != 6) return -1;
  std::tm tm{};
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = s;
  int64_t t = static_cast<int64_t>(timegm(&tm));
  // Offsets like +02:00 after the seconds (and optional fraction).
  size_t pos = 19;
  if (pos < text.size() && text[pos] == '.') {
    ++pos;
    while (pos < text.size() && std::isdigit(static_cast<unsigned char>(text[pos]))) ++pos;
  }
  if (pos < text.size() && (text[pos] == '+' || text[pos] == '-')) {
    int oh = 0, om = 0;
    if (std::sscanf(text.c_str() + pos + 1, "%2d:%2d", &oh, &om) == 2)
      t -= (text[pos] == '+' ? 1 : -1) * (oh * 3600 + om * 60);
  }
  return t;
}

}  // namespace hetermoe::op
