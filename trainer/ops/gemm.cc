// CBLAS-backed linear-layer GEMMs.
//
// Threading: BLAS runs single-threaded and the trainer splits each product
// into row blocks of the output across its OpenMP threads. Mixing OpenBLAS's
// own pthread pool with the OpenMP loops of the other ops made the two pools
// spin against each other (2 threads ran 2-3x slower than 1 on 2 cores);
// one pool avoids that. Each block is an independent sgemm, so results are
// deterministic for a given thread count.
//
// Zero-sized products (an expert that got no tokens) are legal and do nothing.
#include "trainer/ops/gemm.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>

namespace hetermoe::ops {
namespace {

// Rows below which splitting is not worth a parallel region.
constexpr int64_t kMinRowsPerThread = 16;

// Runs fn(row_begin, row_count) over [0, rows) in contiguous blocks.
template <typename Fn>
void ForRowBlocks(int64_t rows, int64_t flops_per_row, Fn fn) {
  const int threads = omp_get_max_threads();
  int64_t blocks = std::min<int64_t>(threads, rows / kMinRowsPerThread);
  if (flops_per_row * rows < (int64_t{1} << 18)) blocks = 1;  // tiny: not worth threads
  if (blocks <= 1) {
    fn(0, rows);
    return;
  }
#pragma omp parallel for num_threads(blocks) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = rows * b / blocks, end = rows * (b + 1) / blocks;
    if (end > begin) fn(begin, end - begin);
  }
}

}  // namespace

void LinearForward(int64_t M, int64_t N, int64_t K, const float* x, const float* W, float* y,
                   bool accumulate) {
  if (M == 0 || N == 0) return;
  ForRowBlocks(M, N * K, [&](int64_t r0, int64_t rows) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, N, K, 1.0f, x + r0 * K, K, W, K,
                accumulate ? 1.0f : 0.0f, y + r0 * N, N);
  });
}

void LinearBackwardInput(int64_t M, int64_t N, int64_t K, const float* dy, const float* W,
                         float* dx, bool accumulate) {
  if (M == 0 || K == 0) return;
  ForRowBlocks(M, N * K, [&](int64_t r0, int64_t rows) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, K, N, 1.0f, dy + r0 * N, N, W, K,
                accumulate ? 1.0f : 0.0f, dx + r0 * K, K);
  });
}

void LinearBackwardWeight(int64_t M, int64_t N, int64_t K, const float* dy, const float* x,
                          float* dW) {
  if (M == 0) return;
  // Split the rows of dW (output features); each block reduces over all M.
  ForRowBlocks(N, M * K, [&](int64_t r0, int64_t rows) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, K, M, 1.0f, dy + r0, N, x, K, 1.0f,
                dW + r0 * K, K);
  });
}

void SetNumThreads(int threads) {
  threads = std::max(1, threads);
  openblas_set_num_threads(1);
  omp_set_num_threads(threads);
}

int NumThreads() { return omp_get_max_threads(); }

}  // namespace hetermoe::ops
