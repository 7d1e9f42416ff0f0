// What CUDA devices this process can use. Host-only API so CPU code and the
// GPU tests can ask without including CUDA headers.
#pragma once

#include <string>

namespace hetermoe::kernels {

// Number of usable CUDA devices; 0 when there is no GPU or no driver (cudart
// then reports "driver version is insufficient"), with the reason in `why`.
int CudaDeviceCount(std::string* why = nullptr);

}  // namespace hetermoe::kernels
