// Chrome trace (chrome://tracing, Perfetto) of one rank's compute and
// communication waits: one process per rank, one thread per lane (compute,
// dispatch waits, combine waits), so the zebra stripes can be seen.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace hetermoe::parallel {

class Tracer {
 public:
  enum Lane { kCompute = 0, kDispatch = 1, kCombine = 2 };
  explicit Tracer(int rank, std::string role);

  using Clock = std::chrono::steady_clock;
  void Add(const std::string& name, Lane lane, Clock::time_point begin, Clock::time_point end);
  // Writes {"traceEvents": [...]} for this rank.
  void Write(const std::string& path) const;
  // Merges per-rank files into one trace (the launcher, after the run).
  static void Merge(const std::vector<std::string>& parts, const std::string& path);

 private:
  struct Event {
    std::string name;
    Lane lane;
    double ts_us, dur_us;
  };
  int rank_;
  std::string role_;
  std::vector<Event> events_;
};

}  // namespace hetermoe::parallel
