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
          [](void* p) { cudaFree(p); }};
}

}  // namespace hetermoe::kernels
