#include "trainer/parallel/trace.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace hetermoe::parallel {
namespace {

// The clock's own epoch (CLOCK_MONOTONIC on Linux, shared by every process
// of a machine), so the ranks of one machine line up exactly and the gap
// between one rank's send and another's receive can be read off the trace
// (bench/validate_simulator.py does). Ranks on different machines are offset.
const Tracer::Clock::time_point kOrigin{};

}  // namespace

Tracer::Tracer(int rank, std::string role) : rank_(rank), role_(std::move(role)) {}

void Tracer::Add(const std::string& name, Lane lane, Clock::time_point begin, Clock::time_point end) {
  events_.push_back({name, lane,
                     std::chrono::duration<double, std::micro>(begin - kOrigin).count(),
                     std::chrono::duration<double, std::micro>(end - begin).count()});
}

void Tracer::Write(const std::string& path) const {
  static const char* kLanes[] = {"compute", "dispatch wait", "combine wait"};
  nlohmann::json events = nlohmann::json::array();
  events.push_back({{"ph", "M"}, {"name", "process_name"}, {"pid", rank_},
                    {"args", {{"name", "rank " + std::to_string(rank_) + " (" + role_ + ")"}}}});
  for (int lane = 0; lane < 3; ++lane)
    events.push_back({{"ph", "M"}, {"name", "thread_name"}, {"pid", rank_}, {"tid", lane},
                      {"args", {{"name", kLanes[lane]}}}});
  for (const auto& e : events_)
    events.push_back({{"ph", "X"}, {"name", e.name}, {"pid", rank_}, {"tid", static_cast<int>(e.lane)},
                      {"ts", e.ts_us}, {"dur", e.dur_us}});
  std::ofstream out(path);
  out << nlohmann::json{{"traceEvents", events}}.dump();
  if (!out) throw Error(path + ": cannot write trace");
}

void Tracer::Merge(const std::vector<std::string>& parts, const std::string& path) {
  nlohmann::json all = nlohmann::json::array();
  for (const auto& p : parts) {
    std::ifstream in(p);
    if (!in) continue;  // a rank that died before writing
    const auto j = nlohmann::json::parse(in, nullptr, false);
    if (j.is_discarded()) continue;
    for (const auto& e : j["traceEvents"]) all.push_back(e);
  }
  std::ofstream out(path);
  out << nlohmann::json{{"traceEvents", all}, {"displayTimeUnit", "ms"}}.dump();
  if (!out) throw Error(path + ": cannot write trace");
}

}  // namespace hetermoe::parallel
