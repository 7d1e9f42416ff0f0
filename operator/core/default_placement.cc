// MakeDefaultPlacement: the planner when this build has it, the tier rule
// otherwise (see placement.h).
#include "operator/core/placement.h"

namespace hetermoe::op {

#ifdef HETERMOE_OPERATOR_HAVE_PLANNER
std::unique_ptr<Placement> MakePlannerPlacement();  // planner_placement.cc
#endif

std::unique_ptr<Placement> MakeDefaultPlacement() {
#ifdef HETERMOE_OPERATOR_HAVE_PLANNER
  return MakePlannerPlacement();
#else
  return std::make_unique<TierPlacement>();
#endif
}

}  // namespace hetermoe::op
