// How kernels are launched, so that one source runs on a GPU and on the CPU
// emulator (kernels/emulator) the tests use where there is no GPU.
//
//   HM_LAUNCH(Kernel, grid, block, shared_bytes, stream)(args...);
//   HM_DYNAMIC_SHARED(float, smem);   // extern __shared__ float smem[];
//
// Under nvcc these are the <<<...>>> launch and the extern __shared__ array.
// Compiled by a host compiler with HETERMOE_CUDA_EMULATOR defined, the
// launch runs every block of the grid on the CPU, one fiber per thread, and
// the dynamic shared array is the emulated block's (emulator/device_api.h).
#pragma once

#if defined(__CUDACC__)
#define HM_LAUNCH(kernel, grid, block, shared_bytes, stream) kernel<<<grid, block, shared_bytes, stream>>>
#define HM_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#elif defined(HETERMOE_CUDA_EMULATOR)
#include "kernels/emulator/device_api.h"
#define HM_LAUNCH(kernel, grid, block, shared_bytes, stream) \
  ::hetermoe::emulator::Launch(#kernel, kernel, grid, block, shared_bytes, stream)
#define HM_DYNAMIC_SHARED(type, name) type* name = ::hetermoe::emulator::DynamicShared<type>()
#else
#error "kernels/*.cu are compiled by nvcc, or by a host compiler for the CPU emulator (HETERMOE_CUDA_EMULATOR)"
#endif
