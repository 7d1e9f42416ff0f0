// Spec validation: the CRD's cross-field (CEL) rules checked again by the
// operator, because apiservers before 1.25 ignore x-kubernetes-validations,
// plus what CEL cannot see (the model config must parse as a MixtralConfig).
//
// Returns every problem found, each "field: what is wrong"; empty = valid.
// An invalid job is marked Failed with reason InvalidSpec and nothing is
// created for it. Pure.
#pragma once

#include <string>
#include <vector>

#include "operator/api/hetermoejob.h"

namespace hetermoe::op {

// `model_config_text` is the resolved config.json (inline or from the
// ConfigMap); nullptr when it could not be read yet (not checked then).
std::vector<std::string> ValidateSpec(const JobSpec& spec, const std::string* model_config_text);

}  // namespace hetermoe::op
