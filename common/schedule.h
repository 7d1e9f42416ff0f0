// Schedule: how a ZP group's attention and expert work is ordered in a step,
// the one name every part uses for it (the run file's `parallel.schedule`,
// the CRD's spec.parallel.schedule, the planner's simulated step graphs and
// the engine's task order).
//   zebra       HeterMoE's zebra parallelism: attention and expert ranks
//               split, micro-batches overlap layer by layer
//   sequential  DistEP: the same split, one op at a time
//   ep          classic expert parallelism: every rank runs attention and
//               holds a share of the experts
#pragma once

#include <optional>
#include <string>

namespace hetermoe {

enum class Schedule { kZebra, kSequential, kEp };

// The schedule called `name` ("zebra", "sequential", "ep"), or nullopt.
std::optional<Schedule> ScheduleFromName(const std::string& name);
// As ScheduleFromName, but throws hetermoe::Error naming the choices.
Schedule ParseSchedule(const std::string& name);
const char* ScheduleName(Schedule schedule);

}  // namespace hetermoe
