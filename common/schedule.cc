#include "common/schedule.h"

#include "common/error.h"

namespace hetermoe {

std::optional<Schedule> ScheduleFromName(const std::string& name) {
  for (Schedule s : {Schedule::kZebra, Schedule::kSequential, Schedule::kEp})
    if (name == ScheduleName(s)) return s;
  return std::nullopt;
}

Schedule ParseSchedule(const std::string& name) {
  if (const auto s = ScheduleFromName(name)) return *s;
  throw Error("unknown schedule \"" + name + "\" (zebra, sequential or ep)");
}

const char* ScheduleName(Schedule schedule) {
  switch (schedule) {
    case Schedule::kZebra: return "zebra";
    case Schedule::kSequential: return "sequential";
    case Schedule::kEp: return "ep";
  }
  return "unknown";
}

}  // namespace hetermoe
