// CBLAS-backed linear-layer GEMMs. Zero-sized products (an expert that got no
// tokens) are legal and do nothing, which BLAS does not guarantee by itself.
#include "trainer/ops/gemm.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>

namespace hetermoe::ops {

void LinearForward(int64_t M, int64_t N, int64_t K, const float* x, const float* W, float* y,
                   bool accumulate) {
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, W, K,
              accumulate ? 1.0f : 0.0f, y, N);
}

void LinearBackwardInput(int64_t M, int64_t N, int64_t K, const float* dy, const float* W,
                         float* dx, bool accumulate) {
  if (M == 0 || K == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, N, 1.0f, dy, N, W, K,
              accumulate ? 1.0f : 0.0f, dx, K);
}

void LinearBackwardWeight(int64_t M, int64_t N, int64_t K, const float* dy, const float* x,
                          float* dW) {
  if (M == 0) return;
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, K, M, 1.0f, dy, N, x, K, 1.0f, dW, K);
}

void SetNumThreads(int threads) {
  threads = std::max(1, threads);
  openblas_set_num_threads(threads);
  omp_set_num_threads(threads);
}

int NumThreads() { return omp_get_max_threads(); }

}  // namespace hetermoe::ops
