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
// Expert GEMMs (ExpertGemms below): the experts of a layer, each over its
// own rows [offsets[e], offsets[e+1]) with its own weights, as one grouped
// cuBLAS call (cublasGemmGroupedBatchedEx, cuBLAS 12.5+) instead of one
// call per expert. The row counts are host values (the backend has them for
// ExpertCounts and the all-to-all splits anyway); experts with no rows are
// left out. Where cuBLAS does not group a type combination (it returns
// NOT_SUPPORTED; our reading of its table is that 16-bit inputs with fp32
// output are not grouped) or is older than 12.5, the same problems run as
// one cublasGemmEx each: same results, more launches.
#pragma once

#include <cublas_v2.h>

#include <cstdint>
#include <vector>

#include "kernels/precision.h"
#include "kernels/stream.h"

namespace hetermoe::kernels {

// Zero-sized products are legal and do nothing (an expert with no tokens).
void LinearForward(cublasHandle_t handle, ComputeDtype inputs, int64_t M, int64_t N, int64_t K,
                   const void* x, const void* W, float* y, bool accumulate);
void LinearBackwardInput(cublasHandle_t handle, ComputeDtype inputs, int64_t M, int64_t N,
                         int64_t K, const void* dy, const void* W, float* dx, bool accumulate);
void LinearBackwardWeight(cublasHandle_t handle, ComputeDtype inputs, int64_t M, int64_t N,
                          int64_t K, const void* dy, const void* x, float* dW);

// One expert's share of a grouped linear GEMM: `rows` token rows, operands
// as the Linear* function of the same name describes them (device memory;
// a and b in the `inputs` format, c fp32).
struct ExpertProblem {
  int64_t rows;
  const void* a;
  const void* b;
  float* c;
};

// The expert GEMMs of one layer, grouped. Every problem shares N and K:
//   Forward         c[rows, N] (= or +=) a[rows, K] b^T      (a = x_e, b = W_e[N, K])
//   BackwardInput   c[rows, K] (= or +=) a[rows, N] b        (a = dy_e, b = W_e[N, K])
//   BackwardWeight  c[N, K]    +=        a[rows, N]^T b      (a = dy_e, b = x_e[rows, K])
// Holds device scratch for the pointer arrays; calls are ordered on `stream`
// (the handle's). Not thread-safe.
class ExpertGemms {
 public:
  ExpertGemms(CachingAllocator* allocator, cudaStream_t stream);
  void Forward(cublasHandle_t handle, ComputeDtype inputs, int64_t N, int64_t K,
               const std::vector<ExpertProblem>& problems, bool accumulate);
  void BackwardInput(cublasHandle_t handle, ComputeDtype inputs, int64_t N, int64_t K,
                     const std::vector<ExpertProblem>& problems, bool accumulate);
  void BackwardWeight(cublasHandle_t handle, ComputeDtype inputs, int64_t N, int64_t K,
                      const std::vector<ExpertProblem>& problems);
  // Grouped calls issued, and problems that ran one call each (fallback).
  int64_t grouped_calls() const { return grouped_calls_; }
  int64_t single_calls() const { return single_calls_; }
  // The capability check behind the choice: whether cuBLAS's grouped GEMM
  // takes `inputs` operands with an fp32 output and fp32 compute, decided by
  // running one 1 x 1 x 1 product of 1 x 1 with a known answer, once per
  // type (cuBLAS's table of grouped types has changed between releases; a
  // status other than success or NOT_SUPPORTED is an error, and a wrong
  // answer counts as unsupported). Synchronises the stream the first time.
  bool GroupedSupported(cublasHandle_t handle, ComputeDtype inputs);

 private:
  // Column-major problem i: C_i[m_i, n] = op_a(A_i) op_b(B_i) + beta C_i.
  struct ColumnMajor {
    int m, n, k, lda, ldb, ldc;
    const void* A;
    const void* B;
    float* C;
  };
  void Issue(cublasHandle_t handle, ComputeDtype inputs, cublasOperation_t op_a, cublasOperation_t op_b,
             const std::vector<ColumnMajor>& problems, float beta);

  CachingAllocator* allocator_;
  cudaStream_t stream_;
  DeviceBuffer<const void*> pointers_;  // A[], B[], C[] of the last grouped call
  std::vector<const void*> host_pointers_;
  // The grouped call, pointers uploaded on the handle's stream (stream_).
  cublasStatus_t Grouped(cublasHandle_t handle, cudaDataType_t type, cublasOperation_t op_a,
                         cublasOperation_t op_b, const std::vector<ColumnMajor>& problems, float beta);
  int grouped_ok_[3] = {-1, -1, -1};  // per ComputeDtype: GroupedSupported's answer, -1 before it ran
  int64_t grouped_calls_ = 0, single_calls_ = 0;
};

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
