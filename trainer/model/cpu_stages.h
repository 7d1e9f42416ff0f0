// The CPU StageDevice (stages.h): MixtralCpu stages and ops::Experts* over
// host buffers the caller owns (the distributed engine's parameters and
// gradients), so nothing is copied.
#pragma once

#include <memory>

#include "common/mixtral_config.h"
#include "trainer/model/parameters.h"
#include "trainer/model/stages.h"

namespace hetermoe::model {

// params and grads (layout.total() floats each) must outlive the device.
std::unique_ptr<StageDevice> MakeCpuStageDevice(const io::MixtralConfig& config, const ParameterLayout& layout,
                                                const float* params, float* grads);

}  // namespace hetermoe::model
