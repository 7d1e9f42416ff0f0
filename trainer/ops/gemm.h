// GEMM wrappers over CBLAS for row-major fp32 matrices, named by the role
// they play in a linear layer (y = x W^T with W stored [out, in], as in
// PyTorch's nn.Linear and the safetensors files).
#pragma once

#include <cstdint>

namespace hetermoe::ops {

// y[M,N] (= or +=) x[M,K] * W[N,K]^T        -- linear forward
void LinearForward(int64_t M, int64_t N, int64_t K, const float* x, const float* W, float* y,
                   bool accumulate = false);
// dx[M,K] (= or +=) dy[M,N] * W[N,K]         -- linear backward, input side
void LinearBackwardInput(int64_t M, int64_t N, int64_t K, const float* dy, const float* W,
                         float* dx, bool accumulate);
// dW[N,K] += dy[M,N]^T * x[M,K]              -- linear backward, weight side
void LinearBackwardWeight(int64_t M, int64_t N, int64_t K, const float* dy, const float* x,
                          float* dW);

// Threads used by BLAS and by the trainer's own parallel loops.
void SetNumThreads(int threads);
int NumThreads();

}  // namespace hetermoe::ops
