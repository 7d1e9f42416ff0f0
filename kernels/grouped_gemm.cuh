// The expert GEMMs of one layer with each expert's row count on the device:
// the dispatch plan's offsets (kernels/dispatch.cuh) go straight from the
// router to the GEMMs, so a layer whose experts run on the same GPU needs no
// device-to-host copy or stream sync between them. (cuBLAS's grouped GEMM,
// kernels/gemm.h, takes the sizes on the host; it stays the path where the
// host has them anyway: an owner rank, whose rows arrived by an exchange the
// host sized.)
//
// Expert e of [0, experts) owns rows [offsets[e], offsets[e+1]) of the row
// operands (row-major, absolute row indices; offsets is int32 device memory
// of experts + 1 entries), and its weights (or weight gradients) lie
// `weight_stride` elements after expert e - 1's. Shapes as ExpertGemms':
//   kForward         c[r, N] (= or +=) a[r, K] W_e^T       a = x,  w = W_0 [N, K]
//   kBackwardInput   c[r, K] (= or +=) a[r, N] W_e         a = dy, w = W_0 [N, K]
//   kBackwardWeight  G_e[N, K] +=      a[r, N]^T b[r, K]   a = dy, b = x, c = G_0
// a, w and b are in the `inputs` format, c is fp32; accumulation is fp32.
//
// Work layout: 64 x 64 output tiles, 128 threads, the reduction in steps of
// 32 staged through shared memory.
//  - 16-bit inputs: four warps of 32 x 32, mma.sync m16n8k16 (kernels/mma.cuh,
//    sm_80+).
//  - fp32 inputs: each thread 8 x 4 outputs, one fused multiply-add per term
//    in the reduction's order (as a GEMM that sums its k in order).
//  - Forward and backward input: a block per (expert, 64 rows of it, 64
//    columns), its expert found from the offsets; the grid is sized for the
//    most row tiles any split of max_rows rows over the experts can have
//    (max_rows / 64 + experts), and blocks past the last tile exit.
//  - Backward weight: a block per (expert, 64 x 64 tile of G_e), looping over
//    the expert's rows (the reduction: deterministic, no atomics).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/precision.h"

namespace hetermoe::kernels {

enum class GroupedProduct { kForward, kBackwardInput, kBackwardWeight };

struct DeviceSizedGemm {
  GroupedProduct product = GroupedProduct::kForward;
  ComputeDtype inputs = ComputeDtype::kFp32;
  int64_t N = 0, K = 0;
  int64_t experts = 0;
  const int32_t* offsets = nullptr;  // device, [experts + 1]
  int64_t max_rows = 0;              // offsets[experts] - offsets[0] <= max_rows
  const void* a = nullptr;
  const void* b = nullptr;  // W_0 (forward, backward input) or the rows' x (backward weight)
  int64_t weight_stride = 0;
  float* c = nullptr;  // rows' output, or G_0 (backward weight)
  bool accumulate = false;  // backward weight always accumulates
};

// sm = 10 * major + minor: fp32 runs anywhere, 16-bit inputs need the
// m16n8k16 tensor-core instruction (sm_80+; V100 and T4 use cuBLAS's).
bool DeviceSizedGemmSupported(ComputeDtype inputs, int sm);

// cudaErrorInvalidValue for a shape the kernels do not take (negative
// sizes, weight_stride < N * K).
cudaError_t LaunchDeviceSizedGemm(const DeviceSizedGemm& g, cudaStream_t stream);

}  // namespace hetermoe::kernels
