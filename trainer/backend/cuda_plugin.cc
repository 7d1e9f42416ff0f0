// The CUDA backend as a plugin: a shared module that make_backend.cc loads
// with dlopen only when a run asks for a GPU.
//
// Why not link it into hetermoe-trainer: libcublasLt carries ~94 KB of
// thread-local storage, and every library linked at start-up adds its TLS to
// each thread's minimum stack. civetweb (prometheus-cpp's HTTP server) starts
// its threads with a small stack, so pthread_create failed with EINVAL and the
// metrics endpoint could not start in CUDA builds. A dlopen'ed module's TLS is
// allocated lazily and does not count. It also lets CPU-only machines run the
// trainer without any CUDA library installed.
#include <cstring>
#include <string>

#include "common/error.h"
#include "kernels/device.h"
#include "trainer/backend/cuda_backend.h"
#include "trainer/backend/cuda_stages.h"

namespace {

// make()'s object, released to the caller; nullptr with the message copied
// into `error` (size n) when it throws: no exception crosses dlsym.
template <typename Make>
auto Released(char* error, size_t n, Make make) -> decltype(make().release()) {
  try {
    return make().release();
  } catch (const std::exception& e) {
    if (error && n > 0) {
      std::strncpy(error, e.what(), n - 1);
      error[n - 1] = '\0';
    }
    return nullptr;
  }
}

}  // namespace

extern "C" {

// Usable CUDA devices; on 0, the reason is copied into `why` (size n).
int HetermoeCudaDeviceCount(char* why, size_t n) {
  std::string reason;
  const int count = hetermoe::kernels::CudaDeviceCount(&reason);
  if (why && n > 0) {
    std::strncpy(why, reason.c_str(), n - 1);
    why[n - 1] = '\0';
  }
  return count;
}

// Makes the CUDA backend; on failure returns nullptr with the message in `error`.
hetermoe::backend::Backend* HetermoeMakeCudaBackend(const hetermoe::io::MixtralConfig* config,
                                                    const hetermoe::model::ParameterLayout* layout,
                                                    const hetermoe::backend::BackendOptions* options,
                                                    char* error, size_t n) {
  return Released(error, n, [&] { return hetermoe::backend::MakeCudaBackend(*config, *layout, *options); });
}

// Makes the distributed engine's GPU StageDevice; nullptr + `error` on failure.
hetermoe::model::StageDevice* HetermoeMakeCudaStageDevice(const hetermoe::io::MixtralConfig* config,
                                                          const hetermoe::model::ParameterLayout* layout,
                                                          const hetermoe::backend::BackendOptions* options,
                                                          char* error, size_t n) {
  return Released(error, n, [&] { return hetermoe::backend::MakeCudaStageDevice(*config, *layout, *options); });
}

}  // extern "C"
