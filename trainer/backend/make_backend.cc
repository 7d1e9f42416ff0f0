// Backend selection. The CUDA backend is compiled in only when the build has
// nvcc (HETERMOE_HAVE_CUDA); otherwise "cuda" is a clear error and "auto" is
// the CPU.
#include <cstdio>

#include "trainer/backend/backend.h"
#include "trainer/backend/cpu_backend.h"
#include "trainer/util/error.h"

#if defined(HETERMOE_HAVE_CUDA)
#include "kernels/device.h"
#include "trainer/backend/cuda_backend.h"
#endif

namespace hetermoe::backend {

std::unique_ptr<Backend> MakeBackend(const io::MixtralConfig& config,
                                     const model::ParameterLayout& layout,
                                     const BackendOptions& options) {
  const std::string& device = options.device;
  if (device != "cpu" && device != "cuda" && device != "auto")
    throw Error("device \"" + device + "\" is not one of auto, cpu, cuda");
  if (device == "cpu") return std::make_unique<CpuBackend>(config, layout, options.adamw);
#if defined(HETERMOE_HAVE_CUDA)
  std::string why;
  if (kernels::CudaDeviceCount(&why) > 0) return MakeCudaBackend(config, layout, options);
  if (device == "cuda") throw Error("device cuda: no usable GPU (" + why + ")");
#else
  if (device == "cuda") throw Error("device cuda: this build has no CUDA support (built without nvcc)");
#endif
  return std::make_unique<CpuBackend>(config, layout, options.adamw);
}

}  // namespace hetermoe::backend
