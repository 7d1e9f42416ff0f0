#include "kernels/common.cuh"
#include "kernels/rope.cuh"
#include "kernels/shared/math.h"

namespace hetermoe::kernels {

__global__ void RopeKernel(float* x, const float* cos_table, const float* sin_table,
                           int64_t tokens, int64_t heads, int64_t half, int64_t seq_len,
                           float sin_sign) {
  const int64_t p = GlobalThreadIndex();  // pair index over [tokens, heads, half]
  if (p >= tokens * heads * half) return;
  const int64_t i = p % half, head_row = p / half;  // head_row = n * heads + h
  const int64_t n = head_row / heads, pos = n % seq_len;
  float* v = x + head_row * 2 * half;
  math::RopeRotate(v[i], v[i + half], cos_table[pos * half + i], sin_sign * sin_table[pos * half + i]);
}

cudaError_t LaunchRope(float* x, const float* cos_table, const float* sin_table, int64_t tokens,
                       int64_t heads, int64_t head_dim, int64_t seq_len, bool inverse,
                       cudaStream_t stream) {
  const int64_t half = head_dim / 2, pairs = tokens * heads * half;
  if (pairs == 0) return cudaSuccess;
  HM_LAUNCH(RopeKernel, BlocksFor(pairs, kThreadsPerBlock), kThreadsPerBlock, 0, stream)(
      x, cos_table, sin_table, tokens, heads, half, seq_len, inverse ? -1.0f : 1.0f);
  return cudaGetLastError();
}

}  // namespace hetermoe::kernels
