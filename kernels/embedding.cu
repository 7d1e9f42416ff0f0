#include "kernels/common.cuh"
#include "kernels/embedding.cuh"

namespace hetermoe::kernels {

__global__ void EmbeddingForwardKernel(const float* table, const int32_t* ids, int64_t N, int64_t d,
                                       float* out) {
  const int64_t i = GlobalThreadIndex();
  if (i >= N * d) return;
  const int64_t n = i / d, j = i % d;
  out[i] = table[static_cast<int64_t>(ids[n]) * d + j];
}

__global__ void EmbeddingBackwardKernel(const float* dout, const int32_t* ids, int64_t N, int64_t d,
                                        float* dtable) {
  const int64_t j = GlobalThreadIndex();
  if (j >= d) return;
  for (int64_t n = 0; n < N; ++n) dtable[static_cast<int64_t>(ids[n]) * d + j] += dout[n * d + j];
}

cudaError_t LaunchEmbeddingForward(const float* table, const int32_t* ids, int64_t N, int64_t d,
                                   float* out, cudaStream_t stream) {
  if (N * d == 0) return cudaSuccess;
  HM_LAUNCH(EmbeddingForwardKernel, BlocksFor(N * d, kThreadsPerBlock), kThreadsPerBlock, 0, stream)(
      table, ids, N, d, out);
  return cudaGetLastError();
}

cudaError_t LaunchEmbeddingBackward(const float* dout, const int32_t* ids, int64_t N, int64_t d,
                                    float* dtable, cudaStream_t stream) {
  if (N * d == 0) return cudaSuccess;
  // Small blocks: d may be only a few hundred columns.
  constexpr int kThreads = 64;
  HM_LAUNCH(EmbeddingBackwardKernel, BlocksFor(d, kThreads), kThreads, 0, stream)(dout, ids, N, d, dtable);
  return cudaGetLastError();
}

}  // namespace hetermoe::kernels
