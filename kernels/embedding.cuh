// Token embedding on the GPU. CPU twin: the embedding loops in
// trainer/model/mixtral.cc (Forward's first step, Backward's last).
//
// Shapes: table[V, d], ids[N], out/dout[N, d]. Forward is a row gather.
// Backward scatter-adds rows of dout into the table gradient; tokens repeat,
// so instead of atomics (whose order varies run to run) it sums each id's
// rows in segments of at most 32, in passes (kernels/embedding_plan.h, made
// on the host from the ids): parallel over ids, segments and columns, no
// thread adding more than 32 terms in a row, deterministic. The order
// differs from the CPU's serial one (ulps apart).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/embedding_plan.h"

namespace hetermoe::kernels {

// --- kernels ---
// One thread per element (n, j) of out.
__global__ void EmbeddingForwardKernel(const float* table, const int32_t* ids, int64_t N, int64_t d,
                                       float* out);
// One block per (segment, 256 columns): out[s] = the sum of the segment's
// input rows (through `rows` when not null), or, with `ids`,
// dtable[ids[s]] += that sum.
__global__ void EmbeddingSegmentSumKernel(const float* in, const int32_t* rows, const int32_t* starts, int64_t d,
                                          const int32_t* ids, float* out);

// --- launchers ---
cudaError_t LaunchEmbeddingForward(const float* table, const int32_t* ids, int64_t N, int64_t d,
                                   float* out, cudaStream_t stream);
// dtable[ids[n]] += dout[n] by `plan` (MakeEmbeddingGradPlan of the ids),
// given as plan.Packed() on the device; `workspace`:
// EmbeddingBackwardWorkspace(plan, d) floats (null when that is 0).
int64_t EmbeddingBackwardWorkspace(const EmbeddingGradPlan& plan, int64_t d);
cudaError_t LaunchEmbeddingBackward(const float* dout, const EmbeddingGradPlan& plan, const int32_t* device_plan,
                                    int64_t d, float* workspace, float* dtable, cudaStream_t stream);

}  // namespace hetermoe::kernels
