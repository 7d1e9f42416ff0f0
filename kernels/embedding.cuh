// Token embedding on the GPU. CPU twin: the embedding loops in
// trainer/model/mixtral.cc (Forward's first step, Backward's last).
//
// Shapes: table[V, d], ids[N], out/dout[N, d]. Forward is a row gather.
// Backward scatter-adds rows of dout into the table gradient; tokens repeat,
// so instead of atomics (whose order varies run to run) one thread owns one
// column j and walks the tokens in order: deterministic, and the same
// summation order as the CPU. Parallel over d only (a first version; sorting
// tokens by id would add parallelism over the vocabulary).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace hetermoe::kernels {

// --- kernels ---
// One thread per element (n, j) of out.
__global__ void EmbeddingForwardKernel(const float* table, const int32_t* ids, int64_t N, int64_t d,
                                       float* out);
// One thread per column j; dtable[ids[n], j] += dout[n, j] for n = 0..N-1.
__global__ void EmbeddingBackwardKernel(const float* dout, const int32_t* ids, int64_t N, int64_t d,
                                        float* dtable);

// --- launchers ---
cudaError_t LaunchEmbeddingForward(const float* table, const int32_t* ids, int64_t N, int64_t d,
                                   float* out, cudaStream_t stream);
cudaError_t LaunchEmbeddingBackward(const float* dout, const int32_t* ids, int64_t N, int64_t d,
                                    float* dtable, cudaStream_t stream);

}  // namespace hetermoe::kernels
