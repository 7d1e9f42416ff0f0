// Turning CUDA, cuBLAS and NCCL status codes into hetermoe::Error.
//
// The message names the host, the file and line, the failing call and the
// library's own text, so an error in a pod's log says where it happened.
// Host code only.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <unistd.h>

#include <string>

#include "common/error.h"

namespace hetermoe::kernels {

inline std::string HostName() {
  char name[256] = {0};
  if (gethostname(name, sizeof(name) - 1) != 0) return "unknown-host";
  return name;
}

[[noreturn]] inline void ThrowDeviceError(const char* library, const std::string& what,
                                          const char* call, const char* file, int line) {
  throw Error(std::string(library) + " error on " + HostName() + " at " + file + ":" +
              std::to_string(line) + ": " + call + ": " + what);
}

inline void CheckCuda(cudaError_t err, const char* call, const char* file, int line) {
  if (err != cudaSuccess) ThrowDeviceError("CUDA", cudaGetErrorString(err), call, file, line);
}
inline void CheckCublas(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS)
    ThrowDeviceError("cuBLAS", cublasGetStatusString(status), call, file, line);
}

}  // namespace hetermoe::kernels

#define HM_CUDA_CHECK(call) ::hetermoe::kernels::CheckCuda((call), #call, __FILE__, __LINE__)
#define HM_CUBLAS_CHECK(call) ::hetermoe::kernels::CheckCublas((call), #call, __FILE__, __LINE__)
