#include "kernels/gemm.h"

#include <climits>

#include "kernels/cuda_check.h"
#include "trainer/util/error.h"

namespace hetermoe::kernels {
namespace {

cudaDataType_t CudaType(ComputeDtype dtype) {
  switch (dtype) {
    case ComputeDtype::kFp32: return CUDA_R_32F;
    case ComputeDtype::kBf16: return CUDA_R_16BF;
    case ComputeDtype::kFp16: return CUDA_R_16F;
  }
  return CUDA_R_32F;
}

int Dim(int64_t v) {
  if (v < 0 || v > INT_MAX) throw Error("GEMM dimension " + std::to_string(v) + " exceeds cuBLAS's int range");
  return static_cast<int>(v);
}

// Column-major C[m, n] = alpha op(A) op(B) + beta C with fp32 C and compute.
void Gemm(cublasHandle_t handle, ComputeDtype inputs, cublasOperation_t op_a,
          cublasOperation_t op_b, int64_t m, int64_t n, int64_t k, const void* A, int64_t lda,
          const void* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const float alpha = 1.0f;
  const cudaDataType_t type = CudaType(inputs);
  HM_CUBLAS_CHECK(cublasGemmEx(handle, op_a, op_b, Dim(m), Dim(n), Dim(k), &alpha, A, type, Dim(lda),
                               B, type, Dim(ldb), &beta, C, CUDA_R_32F, Dim(ldc), CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
}

}  // namespace

void LinearForward(cublasHandle_t handle, ComputeDtype inputs, int64_t M, int64_t N, int64_t K,
                   const void* x, const void* W, float* y, bool accumulate) {
  if (M == 0 || N == 0) return;
  // y^T[N, M] = W[N, K] x^T[K, M]; stored W is col-major [K, N] (ld K) -> op T;
  // stored x is col-major x^T [K, M] (ld K) -> op N; y^T col-major ld N.
  Gemm(handle, inputs, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, W, K, x, K, accumulate ? 1.0f : 0.0f, y, N);
}

void LinearBackwardInput(cublasHandle_t handle, ComputeDtype inputs, int64_t M, int64_t N,
                         int64_t K, const void* dy, const void* W, float* dx, bool accumulate) {
  if (M == 0 || K == 0) return;
  // dx^T[K, M] = W^T[K, N] dy^T[N, M]; stored W is W^T col-major (ld K) -> op N;
  // stored dy is dy^T col-major (ld N) -> op N.
  Gemm(handle, inputs, CUBLAS_OP_N, CUBLAS_OP_N, K, M, N, W, K, dy, N, accumulate ? 1.0f : 0.0f, dx, K);
}

void LinearBackwardWeight(cublasHandle_t handle, ComputeDtype inputs, int64_t M, int64_t N,
                          int64_t K, const void* dy, const void* x, float* dW) {
  if (M == 0 || N == 0 || K == 0) return;
  // dW^T[K, N] += x^T[K, M] dy[M, N]; stored x is x^T col-major (ld K) -> op N;
  // stored dy is dy^T col-major [N, M] (ld N) -> op T gives dy[M, N].
  Gemm(handle, inputs, CUBLAS_OP_N, CUBLAS_OP_T, K, N, M, x, K, dy, N, 1.0f, dW, K);
}

BlasHandle::BlasHandle(cudaStream_t stream) {
  HM_CUBLAS_CHECK(cublasCreate(&handle_));
  HM_CUBLAS_CHECK(cublasSetStream(handle_, stream));
  // Default math: no TF32 for fp32 inputs (CUBLAS_COMPUTE_32F is exact fp32).
  HM_CUBLAS_CHECK(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH));
}

BlasHandle::~BlasHandle() {
  if (handle_) cublasDestroy(handle_);
}

}  // namespace hetermoe::kernels
