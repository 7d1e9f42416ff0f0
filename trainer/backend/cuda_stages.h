// The distributed engine's StageDevice on a GPU (cuda_stages.cu): built into
// the CUDA plugin, reached through backend::MakeStageDevice.
#pragma once

#include <memory>

#include "trainer/backend/backend.h"
#include "trainer/model/stages.h"

namespace hetermoe::backend {

// Picks GPU LOCAL_RANK % count when several are visible. Throws
// hetermoe::Error without a usable GPU, or for precision fp16.
std::unique_ptr<model::StageDevice> MakeCudaStageDevice(const io::MixtralConfig& config,
                                                        const model::ParameterLayout& layout,
                                                        const BackendOptions& options);

}  // namespace hetermoe::backend
