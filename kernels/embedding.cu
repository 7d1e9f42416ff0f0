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

__global__ void EmbeddingSegmentSumKernel(const float* in, const int32_t* rows, const int32_t* starts, int64_t d,
                                          const int32_t* ids, float* out) {
  const int64_t s = blockIdx.x;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (j >= d) return;
  float sum = 0.0f;
  for (int64_t r = starts[s]; r < starts[s + 1]; ++r) sum += in[(rows ? static_cast<int64_t>(rows[r]) : r) * d + j];
  if (ids != nullptr)
    out[static_cast<int64_t>(ids[s]) * d + j] += sum;
  else
    out[s * d + j] = sum;
}

cudaError_t LaunchEmbeddingForward(const float* table, const int32_t* ids, int64_t N, int64_t d,
                                   float* out, cudaStream_t stream) {
  if (N * d == 0) return cudaSuccess;
  HM_LAUNCH(EmbeddingForwardKernel, BlocksFor(N * d, kThreadsPerBlock), kThreadsPerBlock, 0, stream)(
      table, ids, N, d, out);
  return cudaGetLastError();
}

int64_t EmbeddingBackwardWorkspace(const EmbeddingGradPlan& plan, int64_t d) {
  return plan.starts.size() > 1 ? 2 * plan.partial_rows * d : 0;
}

cudaError_t LaunchEmbeddingBackward(const float* dout, const EmbeddingGradPlan& plan, const int32_t* device_plan,
                                    int64_t d, float* workspace, float* dtable, cudaStream_t stream) {
  if (plan.rows.empty() || d == 0) return cudaSuccess;
  // Passes alternate between the two halves of the workspace.
  const float* in = dout;
  const int32_t* rows = device_plan;
  for (size_t p = 0; p < plan.starts.size(); ++p) {
    const bool last = p + 1 == plan.starts.size();
    const auto segments = static_cast<unsigned>(plan.starts[p].size() - 1);
    float* out = last ? dtable : workspace + (p % 2) * plan.partial_rows * d;
    HM_LAUNCH(EmbeddingSegmentSumKernel, dim3(segments, BlocksFor(d, kThreadsPerBlock)), kThreadsPerBlock, 0,
              stream)(in, rows, device_plan + plan.StartsAt(p), d, last ? device_plan + plan.IdsAt() : nullptr, out);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
    in = out;
    rows = nullptr;
  }
  return cudaSuccess;
}

}  // namespace hetermoe::kernels
