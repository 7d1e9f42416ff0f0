// Backend selection. The CUDA backend is a plugin (cuda_plugin.cc) loaded at
// run time when a GPU is asked for: found beside the executable, in ../lib,
// at the path the build recorded, or at $HETERMOE_CUDA_PLUGIN. Without it (a
// build without nvcc, or a CPU-only install) "cuda" is a clear error and
// "auto" is the CPU. Under "auto" the plugin is loaded only where the NVIDIA
// driver is present (or $HETERMOE_CUDA_PLUGIN names one): loading the CUDA
// libraries to find no GPU would cost a CPU process ~140 MiB of memory.
#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/plugin.h"
#include "trainer/backend/backend.h"
#include "trainer/backend/cpu_backend.h"
#include "trainer/model/cpu_stages.h"

namespace hetermoe::backend {
namespace {

constexpr const char* kPluginName = "libhetermoe_cuda_plugin.so";

using DeviceCountFn = int (*)(char*, size_t);
using MakeFn = Backend* (*)(const io::MixtralConfig*, const model::ParameterLayout*,
                            const BackendOptions*, char*, size_t);
using MakeStagesFn = model::StageDevice* (*)(const io::MixtralConfig*, const model::ParameterLayout*,
                                             const BackendOptions*, char*, size_t);

const Plugin& CudaPlugin() {
#if defined(HETERMOE_CUDA_PLUGIN_PATH)
  static const Plugin plugin = LoadPlugin(kPluginName, "HETERMOE_CUDA_PLUGIN", HETERMOE_CUDA_PLUGIN_PATH);
#else
  static const Plugin plugin = LoadPlugin(kPluginName, "HETERMOE_CUDA_PLUGIN", nullptr);
#endif
  return plugin;
}

}  // namespace

namespace {

// Whether the NVIDIA kernel driver is here (its /proc entry, or the control
// device a container with GPUs is given), or a plugin is named explicitly
// (the emulator): asked without loading any CUDA library.
bool MayHaveGpu() {
  std::error_code ec;
  return std::getenv("HETERMOE_CUDA_PLUGIN") != nullptr ||
         std::filesystem::exists("/proc/driver/nvidia/version", ec) || std::filesystem::exists("/dev/nvidiactl", ec);
}

// The plugin's entry point `symbol` when options.device asks for (or, under
// auto, allows) a GPU and one is usable; nullptr when the CPU should be used.
void* GpuEntry(const BackendOptions& options, const char* symbol) {
  const std::string& device = options.device;
  if (device != "cpu" && device != "cuda" && device != "auto")
    throw Error("device \"" + device + "\" is not one of auto, cpu, cuda");
  if (device == "cpu") return nullptr;
  if (device == "auto" && !MayHaveGpu()) return nullptr;
  const Plugin& plugin = CudaPlugin();
  if (!plugin.handle) {
    if (device == "cuda")
      throw Error(plugin.found ? "device cuda: " + plugin.why
                               : "device cuda: this build has no CUDA support (" + plugin.why + ")");
    return nullptr;
  }
  auto count = reinterpret_cast<DeviceCountFn>(::dlsym(plugin.handle, "HetermoeCudaDeviceCount"));
  void* entry = ::dlsym(plugin.handle, symbol);
  if (!count || !entry) throw Error(std::string("CUDA plugin: missing entry points (") + kPluginName + ")");
  char why[512] = {0};
  if (count(why, sizeof why) > 0) return entry;
  if (device == "cuda") throw Error(std::string("device cuda: no usable GPU (") + why + ")");
  return nullptr;
}

}  // namespace

std::unique_ptr<Backend> MakeBackend(const io::MixtralConfig& config,
                                     const model::ParameterLayout& layout,
                                     const BackendOptions& options) {
  auto make = reinterpret_cast<MakeFn>(GpuEntry(options, "HetermoeMakeCudaBackend"));
  if (!make) return std::make_unique<CpuBackend>(config, layout, options.adamw);
  char error[1024] = {0};
  Backend* b = make(&config, &layout, &options, error, sizeof error);
  if (!b) throw Error(error);
  return std::unique_ptr<Backend>(b);
}

std::unique_ptr<model::StageDevice> MakeStageDevice(const io::MixtralConfig& config,
                                                    const model::ParameterLayout& layout,
                                                    const BackendOptions& options, float* params, float* grads) {
  auto make = reinterpret_cast<MakeStagesFn>(GpuEntry(options, "HetermoeMakeCudaStageDevice"));
  if (!make) return model::MakeCpuStageDevice(config, layout, params, grads);
  char error[1024] = {0};
  model::StageDevice* d = make(&config, &layout, &options, error, sizeof error);
  if (!d) throw Error(error);
  return std::unique_ptr<model::StageDevice>(d);
}

}  // namespace hetermoe::backend
