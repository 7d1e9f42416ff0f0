#include "kernels/gemm.h"

#include <climits>

#include "common/error.h"
#include "kernels/cuda_check.h"

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

ExpertGemms::ExpertGemms(CachingAllocator* allocator, cudaStream_t stream) : allocator_(allocator), stream_(stream) {
  pointers_.Bind(allocator);
}

namespace {
// The non-empty problems, each as the column-major product `map` makes of it.
template <typename Map>
auto NonEmpty(const std::vector<ExpertProblem>& problems, Map map) {
  std::vector<decltype(map(problems.front()))> out;
  for (const ExpertProblem& p : problems)
    if (p.rows > 0) out.push_back(map(p));
  return out;
}
}  // namespace

void ExpertGemms::Forward(cublasHandle_t handle, ComputeDtype inputs, int64_t N, int64_t K,
                          const std::vector<ExpertProblem>& problems, bool accumulate) {
  // As LinearForward: C^T[N, rows] = W (op T, ld K) x^T (op N, ld K).
  Issue(handle, inputs, CUBLAS_OP_T, CUBLAS_OP_N, NonEmpty(problems, [&](const ExpertProblem& p) {
          return ColumnMajor{Dim(N), Dim(p.rows), Dim(K), Dim(K), Dim(K), Dim(N), p.b, p.a, p.c};
        }), accumulate ? 1.0f : 0.0f);
}

void ExpertGemms::BackwardInput(cublasHandle_t handle, ComputeDtype inputs, int64_t N, int64_t K,
                                const std::vector<ExpertProblem>& problems, bool accumulate) {
  // As LinearBackwardInput: dx^T[K, rows] = W^T (op N, ld K) dy^T (op N, ld N).
  Issue(handle, inputs, CUBLAS_OP_N, CUBLAS_OP_N, NonEmpty(problems, [&](const ExpertProblem& p) {
          return ColumnMajor{Dim(K), Dim(p.rows), Dim(N), Dim(K), Dim(N), Dim(K), p.b, p.a, p.c};
        }), accumulate ? 1.0f : 0.0f);
}

void ExpertGemms::BackwardWeight(cublasHandle_t handle, ComputeDtype inputs, int64_t N, int64_t K,
                                 const std::vector<ExpertProblem>& problems) {
  // As LinearBackwardWeight: dW^T[K, N] += x^T (op N, ld K) dy (op T, ld N).
  Issue(handle, inputs, CUBLAS_OP_N, CUBLAS_OP_T, NonEmpty(problems, [&](const ExpertProblem& p) {
          return ColumnMajor{Dim(K), Dim(N), Dim(p.rows), Dim(K), Dim(N), Dim(K), p.b, p.a, p.c};
        }), 1.0f);
}

cublasStatus_t ExpertGemms::Grouped(cublasHandle_t handle, cudaDataType_t type, cublasOperation_t op_a,
                                    cublasOperation_t op_b, const std::vector<ColumnMajor>& problems, float beta) {
#if CUBLAS_VERSION >= 120500
  // The pointer arrays are copied on stream_: the GEMM must read them there.
  cudaStream_t on = nullptr;
  HM_CUBLAS_CHECK(cublasGetStream(handle, &on));
  if (on != stream_)
    throw Error("ExpertGemms: the cuBLAS handle runs on another stream than the one its pointer arrays are "
                    "copied on (cublasGemmGroupedBatchedEx would read them before they arrive)");
  // One group per problem (sizes differ); pointer arrays go to the device.
  const int count = static_cast<int>(problems.size());
  std::vector<cublasOperation_t> ta(count, op_a), tb(count, op_b);
  std::vector<int> m(count), n(count), k(count), lda(count), ldb(count), ldc(count), size(count, 1);
  std::vector<float> alpha(count, 1.0f), betas(count, beta);
  host_pointers_.resize(3 * count);
  for (int i = 0; i < count; ++i) {
    const ColumnMajor& p = problems[i];
    m[i] = p.m, n[i] = p.n, k[i] = p.k, lda[i] = p.lda, ldb[i] = p.ldb, ldc[i] = p.ldc;
    host_pointers_[i] = p.A;
    host_pointers_[count + i] = p.B;
    host_pointers_[2 * count + i] = p.C;
  }
  if (pointers_.size() < host_pointers_.size()) pointers_.Resize(host_pointers_.size());
  // Pageable source: staged before the call returns, so host_pointers_ may change after.
  HM_CUDA_CHECK(cudaMemcpyAsync(pointers_.data(), host_pointers_.data(), sizeof(void*) * host_pointers_.size(),
                                cudaMemcpyHostToDevice, stream_));
  const void* const* A = pointers_.data();
  return cublasGemmGroupedBatchedEx(handle, ta.data(), tb.data(), m.data(), n.data(), k.data(), alpha.data(), A,
                                    type, lda.data(), A + count, type, ldb.data(), betas.data(),
                                    const_cast<void* const*>(A + 2 * count), CUDA_R_32F, ldc.data(), count,
                                    size.data(), CUBLAS_COMPUTE_32F);
#else
  (void)handle, (void)type, (void)op_a, (void)op_b, (void)problems, (void)beta;
  return CUBLAS_STATUS_NOT_SUPPORTED;
#endif
}

bool ExpertGemms::GroupedSupported(cublasHandle_t handle, ComputeDtype inputs) {
  int& known = grouped_ok_[static_cast<int>(inputs)];
  if (known >= 0) return known == 1;
  // 1 x 1 times 1 x 1: both operands 1 in the input type, the fp32 output 1.
  const uint32_t one_bits = inputs == ComputeDtype::kFp32   ? 0x3F800000u
                            : inputs == ComputeDtype::kBf16 ? 0x3F80u
                                                            : 0x3C00u;  // fp16
  DeviceBuffer<uint32_t> operand(allocator_, 1);
  DeviceBuffer<float> out(allocator_, 1);
  const float sentinel = -1.0f;
  HM_CUDA_CHECK(cudaMemcpyAsync(operand.data(), &one_bits, sizeof one_bits, cudaMemcpyHostToDevice, stream_));
  HM_CUDA_CHECK(cudaMemcpyAsync(out.data(), &sentinel, sizeof sentinel, cudaMemcpyHostToDevice, stream_));
  const cublasStatus_t status =
      Grouped(handle, CudaType(inputs), CUBLAS_OP_N, CUBLAS_OP_N,
              {ColumnMajor{1, 1, 1, 1, 1, 1, operand.data(), operand.data(), out.data()}}, 0.0f);
  if (status != CUBLAS_STATUS_SUCCESS && status != CUBLAS_STATUS_NOT_SUPPORTED)
    CheckCublas(status, "cublasGemmGroupedBatchedEx (capability check)", __FILE__, __LINE__);
  float got = 0;
  HM_CUDA_CHECK(cudaMemcpyAsync(&got, out.data(), sizeof got, cudaMemcpyDeviceToHost, stream_));
  HM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  known = status == CUBLAS_STATUS_SUCCESS && got == 1.0f ? 1 : 0;
  return known == 1;
}

void ExpertGemms::Issue(cublasHandle_t handle, ComputeDtype inputs, cublasOperation_t op_a,
                        cublasOperation_t op_b, const std::vector<ColumnMajor>& problems, float beta) {
  if (problems.empty()) return;
  if (GroupedSupported(handle, inputs)) {
    CheckCublas(Grouped(handle, CudaType(inputs), op_a, op_b, problems, beta), "cublasGemmGroupedBatchedEx",
                __FILE__, __LINE__);
    ++grouped_calls_;
    return;
  }
  for (const ColumnMajor& p : problems) {
    Gemm(handle, inputs, op_a, op_b, p.m, p.n, p.k, p.A, p.lda, p.B, p.ldb, beta, p.C, p.ldc);
    ++single_calls_;
  }
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
