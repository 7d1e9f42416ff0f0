// The part of cuBLAS the trainer calls, on the CPU: handles bound to
// streams, and GEMMs by their column-major definition
//   C[m, n] = alpha op(A)[m, k] op(B)[k, n] + beta C      (beta 0: C not read)
// with fp32, fp16 or bf16 inputs, fp32 output and fp32 accumulation in k
// order. It is written from cuBLAS's documented contract, independently of
// kernels/gemm.cc, so the emulated tests check gemm.cc's row-major to
// column-major mapping for real; arguments cuBLAS would reject (negative
// sizes, a leading dimension too small for its matrix, mixed input types)
// are rejected the same way (at the call, as cuBLAS returns its status),
// and operands must be device memory. A GEMM runs on its handle's stream, in
// that stream's order with the rest of its work (streams.h): a GEMM whose
// inputs another stream writes without an event between reads them stale,
// and the grouped GEMM reads its device arrays of pointers when it runs.
#include <cublas_v2.h>

#include <memory>
#include <string>
#include <vector>

#include "kernels/emulator/host_timeline.h"
#include "kernels/emulator/block_runner.h"
#include "kernels/emulator/device_api.h"
#include "kernels/emulator/streams.h"

namespace hetermoe::emulator {
namespace {

struct Handle {
  cudaStream_t stream = nullptr;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
};

float Load(const void* base, cudaDataType_t type, long long index) {
  switch (type) {
    case CUDA_R_32F: return static_cast<const float*>(base)[index];
    case CUDA_R_16F: return __half2float(static_cast<const __half*>(base)[index]);
    case CUDA_R_16BF: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[index]);
    default: return 0.0f;
  }
}

long long ElementBytes(cudaDataType_t type) { return type == CUDA_R_32F ? 4 : 2; }

bool SupportedInput(cudaDataType_t t) { return t == CUDA_R_32F || t == CUDA_R_16F || t == CUDA_R_16BF; }

// Throws unless operand `index` (0 = A, 1 = B, 2 = C) lies in device memory.
void CheckOperand(const char* call, int index, const void* p, long long rows, long long cols, long long ld,
                  long long element_bytes) {
  if (rows == 0 || cols == 0) return;
  const long long bytes = ((cols - 1) * ld + rows) * element_bytes;
  CheckKernelPointer(call, index, p);
  CheckKernelPointer(call, index, static_cast<const char*>(p) + bytes - 1);
}

// One problem's arguments.
struct Problem {
  cublasOperation_t ta, tb;
  int m, n, k;
  float alpha;
  const void* A;
  cudaDataType_t at;
  int lda;
  const void* B;
  cudaDataType_t bt;
  int ldb;
  float beta;
  void* C;
  cudaDataType_t ct;
  int ldc;
  const char* call = "cublasGemmEx";  // for errors
};

// What cuBLAS answers at the call (pointers aside).
cublasStatus_t Check(const Problem& p) {
  const auto [ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, Cv, ct, ldc, call] = p;
  if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) return CUBLAS_STATUS_INVALID_VALUE;
  if (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T) return CUBLAS_STATUS_INVALID_VALUE;
  const int a_rows = ta == CUBLAS_OP_N ? m : k, b_rows = tb == CUBLAS_OP_N ? k : n;
  if (lda < std::max(1, a_rows) || ldb < std::max(1, b_rows) || ldc < std::max(1, m))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (!SupportedInput(at) || at != bt || ct != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  return CUBLAS_STATUS_SUCCESS;
}

// The product itself, when the stream runs it (Check passed).
void Run(const Problem& p) {
  const auto [ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, Cv, ct, ldc, call] = p;
  if (m == 0 || n == 0) return;
  const int a_rows = ta == CUBLAS_OP_N ? m : k, b_rows = tb == CUBLAS_OP_N ? k : n;
  // op(A) is m x k: stored k x m (ld >= k) when transposed, else m x k (ld >= m).
  CheckOperand(call, 0, A, a_rows, ta == CUBLAS_OP_N ? k : m, lda, ElementBytes(at));
  CheckOperand(call, 1, B, b_rows, tb == CUBLAS_OP_N ? n : k, ldb, ElementBytes(bt));
  CheckOperand(call, 2, Cv, m, n, ldc, 4);
  // op(A) row by row and op(B) column by column, widened to fp32 once, so the
  // inner product runs over contiguous memory.
  std::vector<float> a(static_cast<size_t>(m) * k), b(static_cast<size_t>(k) * n);
  for (long long i = 0; i < m; ++i)
    for (long long p = 0; p < k; ++p) a[i * k + p] = Load(A, at, ta == CUBLAS_OP_N ? i + p * lda : p + i * lda);
  for (long long j = 0; j < n; ++j)
    for (long long p = 0; p < k; ++p) b[j * k + p] = Load(B, bt, tb == CUBLAS_OP_N ? p + j * ldb : j + p * ldb);
  float* C = static_cast<float*>(Cv);
  for (long long j = 0; j < n; ++j)
    for (long long i = 0; i < m; ++i) {
      const float* ar = a.data() + i * k;
      const float* bc = b.data() + j * k;
      float acc = 0.0f;
      for (long long p = 0; p < k; ++p) acc += ar[p] * bc[p];
      float& c = C[i + j * ldc];
      c = beta == 0.0f ? alpha * acc : alpha * acc + beta * c;
    }
}

bool Fp32Compute(cublasComputeType_t t) {
  return t == CUBLAS_COMPUTE_32F || t == CUBLAS_COMPUTE_32F_PEDANTIC || t == CUBLAS_COMPUTE_32F_FAST_16F ||
         t == CUBLAS_COMPUTE_32F_FAST_16BF || t == CUBLAS_COMPUTE_32F_FAST_TF32;
}

}  // namespace
}  // namespace hetermoe::emulator

using hetermoe::emulator::Handle;

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  *handle = reinterpret_cast<cublasHandle_t>(new Handle);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete reinterpret_cast<Handle*>(handle);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  reinterpret_cast<Handle*>(handle)->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGetStream_v2(cublasHandle_t handle, cudaStream_t* stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (stream == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *stream = reinterpret_cast<Handle*>(handle)->stream;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  reinterpret_cast<Handle*>(handle)->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}
const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    default: return "unknown cuBLAS status (CUDA emulator)";
  }
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m,
                            int n, int k, const void* alpha, const void* A, cudaDataType Atype, int lda,
                            const void* B, cudaDataType Btype, int ldb, const void* beta, void* C,
                            cudaDataType Ctype, int ldc, cublasComputeType_t computeType, cublasGemmAlgo_t) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!hetermoe::emulator::Fp32Compute(computeType)) return CUBLAS_STATUS_NOT_SUPPORTED;
  const hetermoe::emulator::Problem p{transa, transb, m, n, k, *static_cast<const float*>(alpha), A, Atype, lda,
                                      B, Btype, ldb, *static_cast<const float*>(beta), C, Ctype, ldc};
  if (const cublasStatus_t s = hetermoe::emulator::Check(p); s != CUBLAS_STATUS_SUCCESS) return s;
  hetermoe::emulator::NoteHostTimeline("launch", "cublasGemmEx");
  hetermoe::emulator::Submit(reinterpret_cast<Handle*>(handle)->stream, [p] { hetermoe::emulator::Run(p); });
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmGroupedBatchedEx(cublasHandle_t handle, const cublasOperation_t transa_array[],
                                          const cublasOperation_t transb_array[], const int m_array[],
                                          const int n_array[], const int k_array[], const void* alpha_array,
                                          const void* const Aarray[], cudaDataType_t Atype,
                                          const int lda_array[], const void* const Barray[],
                                          cudaDataType_t Btype, const int ldb_array[], const void* beta_array,
                                          void* const Carray[], cudaDataType_t Ctype, const int ldc_array[],
                                          int group_count, const int group_size[],
                                          cublasComputeType_t computeType) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (group_count < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (!hetermoe::emulator::Fp32Compute(computeType)) return CUBLAS_STATUS_NOT_SUPPORTED;
  // As we read cuBLAS's table of supported types for the grouped GEMM: inputs
  // and output of one type (so 16-bit inputs with fp32 output are refused,
  // and callers take their one-call-per-problem fallback).
  if (Atype != Btype || Atype != Ctype) return CUBLAS_STATUS_NOT_SUPPORTED;
  // The pointer arrays live in device memory, the sizes on the host.
  int total = 0;
  for (int g = 0; g < group_count; ++g) {
    if (group_size[g] < 0) return CUBLAS_STATUS_INVALID_VALUE;
    total += group_size[g];
  }
  if (total > 0) {
    hetermoe::emulator::CheckKernelPointer("cublasGemmGroupedBatchedEx", 7, Aarray);
    hetermoe::emulator::CheckKernelPointer("cublasGemmGroupedBatchedEx", 10, Barray);
    hetermoe::emulator::CheckKernelPointer("cublasGemmGroupedBatchedEx", 14, Carray);
  }
  // The sizes are read now (host arrays), the pointers when the GEMMs run.
  const float* alpha = static_cast<const float*>(alpha_array);
  const float* beta = static_cast<const float*>(beta_array);
  auto problems = std::make_shared<std::vector<hetermoe::emulator::Problem>>();
  for (int g = 0; g < group_count; ++g)
    for (int i = 0; i < group_size[g]; ++i) {
      problems->push_back({transa_array[g], transb_array[g], m_array[g], n_array[g], k_array[g], alpha[g], nullptr,
                           Atype, lda_array[g], nullptr, Btype, ldb_array[g], beta[g], nullptr, Ctype,
                           ldc_array[g], "cublasGemmGroupedBatchedEx (a pointer read from Aarray/Barray/Carray)"});
      if (const cublasStatus_t s = hetermoe::emulator::Check(problems->back()); s != CUBLAS_STATUS_SUCCESS) return s;
    }
  hetermoe::emulator::NoteHostTimeline("launch", "cublasGemmGroupedBatchedEx");
  hetermoe::emulator::Submit(reinterpret_cast<Handle*>(handle)->stream, [problems, Aarray, Barray, Carray] {
    for (size_t i = 0; i < problems->size(); ++i) {
      hetermoe::emulator::Problem p = (*problems)[i];
      p.A = Aarray[i];
      p.B = Barray[i];
      p.C = Carray[i];
      hetermoe::emulator::Run(p);
    }
  });
  return CUBLAS_STATUS_SUCCESS;
}
