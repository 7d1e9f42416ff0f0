// Rotary position embedding on the GPU, rotate-half convention. CPU twin:
// trainer/ops/rope; the rotation is kernels/shared/math.h's RopeRotate and
// the cos/sin tables [T, hd/2] are the CPU's MakeRopeTable, uploaded once, so
// both backends rotate by bit-identical angles.
//
// x[tokens, heads * hd] in place; token n sits at position n % seq_len; the
// pair (i, i + hd/2) of each head is rotated by the angle of (position, i).
// One thread per pair. inverse = true rotates by -angle (backward).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace hetermoe::kernels {

// --- kernels ---
__global__ void RopeKernel(float* x, const float* cos_table, const float* sin_table,
                           int64_t tokens, int64_t heads, int64_t half, int64_t seq_len,
                           float sin_sign);

// --- launchers ---
cudaError_t LaunchRope(float* x, const float* cos_table, const float* sin_table, int64_t tokens,
                       int64_t heads, int64_t head_dim, int64_t seq_len, bool inverse,
                       cudaStream_t stream);

}  // namespace hetermoe::kernels
