// MakeDefaultPolicy: the planner when this build has it, the tier rule
// otherwise (see placement.h).
#include "operator/core/placement.h"

namespace hetermoe::op {

#ifdef HETERMOE_OPERATOR_HAVE_PLANNER
std::unique_ptr<PlacementPolicy> MakePlannerPolicy();  // planner_placement.cc
#endif

std::unique_ptr<PlacementPolicy> MakeDefaultPolicy() {
#ifdef HETERMOE_OPERATOR_HAVE_PLANNER
  return MakePlannerPolicy();
#else
  return std::make_unique<TierPolicy>();
#endif
}

}  // namespace hetermoe::op
