// The linear-layer GEMMs on the GPU, through cuBLAS. CPU twin:
// trainer/ops/gemm, with the same row-major contracts (W stored [out, in] as
// nn.Linear, y = x W^T):
//   LinearForward        y[M,N]  (= or +=) x[M,K] W[N,K]^T
//   LinearBackwardInput  dx[M,K] (= or +=) dy[M,N] W[N,K]
//   LinearBackwardWeight dW[N,K] +=        dy[M,N]^T x[M,K]
//
// cuBLAS is column-major; a row-major [R, C] matrix is the column-major
// [C, R] matrix with leading dimension C, so each product is issued
// transposed: y^T = W x^T is gemm(op_T on W, op_N on x^T) with m = N,
// n = M, k = K, and so on (see gemm.cc).
//
// Operands x, W, dy are in `inputs` format (fp32, bf16 or fp16); outputs are
// fp32 and accumulation is fp32 (CUBLAS_COMPUTE_32F). For fp32 inputs the
// handle must stay in the default math mode: no TF32, so results match the
// CPU's fp32 GEMMs to rounding.
//
// Expert GEMMs: one call per expert over its rows [offsets[e], offsets[e+1])
// (the per-expert loop in trainer/backend/cuda_backend.cu), skipping experts
// with no rows. A grouped GEMM with device-side sizes is future work; the
// loop needs the counts on the host, which the backend has anyway for
// ExpertCounts and the all-to-all splits.
#pragma once

#include <cublas_v2.h>

#include <cstdint>

#include "kernels/precision.h"

namespace hetermoe::kernels {

// Zero-sized products are legal and do nothing (an expert with no tokens).
void LinearForward(cublasHandle_t handle, ComputeDtype inputs, int64_t M, int64_t N, int64_t K,
                   const void* x, const void* W, float* y, bool accumulate);
void LinearBackwardInput(cublasHandle_t handle, ComputeDtype inputs, int64_t M, int64_t N,
                         int64_t K, const void* dy, const void* W, float* dx, bool accumulate);
void LinearBackwardWeight(cublasHandle_t handle, ComputeDtype inputs, int64_t M, int64_t N,
                          int64_t K, const void* dy, const void* x, float* dW);

// Owns a cuBLAS handle bound to a stream. Not thread-safe.
class BlasHandle {
 public:
  explicit BlasHandle(cudaStream_t stream);
  ~BlasHandle();
  BlasHandle(const BlasHandle&) = delete;
  BlasHandle& operator=(const BlasHandle&) = delete;
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
};

}  // namespace hetermoe::kernels
