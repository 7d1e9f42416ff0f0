// Casts between the fp32 master copies and the 16-bit compute formats
// (bf16 on sm_80+, fp16 on sm_70/75; see kernels/precision.h). Round to
// nearest even, as torch's .to(dtype). One thread per element.
//
// cuda_bf16.h converts in software below sm_80, so these compile and run on
// every architecture the build targets.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace hetermoe::kernels {

// --- kernels ---
__global__ void CastToBf16Kernel(const float* x, int64_t n, __nv_bfloat16* y);
__global__ void CastToHalfKernel(const float* x, int64_t n, __half* y);

// --- launchers ---
cudaError_t LaunchCastToBf16(const float* x, int64_t n, __nv_bfloat16* y, cudaStream_t stream);
cudaError_t LaunchCastToHalf(const float* x, int64_t n, __half* y, cudaStream_t stream);

}  // namespace hetermoe::kernels
