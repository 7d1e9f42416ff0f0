// The plan as a readable report for people at a terminal: roles, group
// shapes, Asym-EA per layer, predicted speed and utilisation, and the
// baselines with HeterMoE's speed-up over each. Groups are summarized (first
// few, then a count) so a 10,000-GPU plan stays one screen.
#pragma once

#include <string>

#include "planner/plan.h"

namespace hetermoe::planner {

std::string PlanTable(const Plan& plan);

// How the search chose (hetermoe-plan --explain): the plan's shape and the
// next best, each with its predicted step, tokens/s, busy fractions and
// memory per rank; the most promising shapes that did not fit, and why; how
// many shapes were enumerated and priced.
std::string PlanExplanation(const Plan& plan);

}  // namespace hetermoe::planner
