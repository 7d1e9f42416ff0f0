#include <cuda_runtime.h>

#include "kernels/device.h"

namespace hetermoe::kernels {

int CudaDeviceCount(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    if (why) *why = cudaGetErrorString(err);
    return 0;
  }
  if (count == 0 && why) *why = "no CUDA devices";
  return count;
}

}  // namespace hetermoe::kernels
