#include <cuda_runtime.h>

#include "kernels/device.h"
#include "kernels/stream.h"

namespace hetermoe::kernels {

int CudaDeviceCount(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    if (why) *why = cudaGetErrorString(err);
    cudaGetLastError();  // reset the last-error state so later calls start clean
    return 0;
  }
  if (count == 0 && why) *why = "no CUDA devices";
  return count;
}

CachingAllocator::Backing CudaMallocBacking() {
  return {[](size_t bytes) -> void* {
            void* p = nullptr;
            if (cudaMalloc(&p, bytes) != cudaSuccess) {
              cudaGetLastError();  // out of memory is reported by returning nullptr
              return nullptr;
            }
            return p;
          },
          [](void* p) { cudaFree(p); },
          [](void* stream) -> void* {
            cudaEvent_t e = nullptr;
            HM_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
            HM_CUDA_CHECK(cudaEventRecord(e, static_cast<cudaStream_t>(stream)));
            return e;
          },
          [](void* event) {
            const cudaError_t status = cudaEventQuery(static_cast<cudaEvent_t>(event));
            if (status == cudaErrorNotReady) {
              cudaGetLastError();
              return false;
            }
            HM_CUDA_CHECK(status);  // a failed stream: the error, not a block reused too early
            return true;
          },
          [](void* event) { cudaEventDestroy(static_cast<cudaEvent_t>(event)); }};
}

}  // namespace hetermoe::kernels
