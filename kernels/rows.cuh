// The rows that cross ranks, packed for and unpacked from the wire on the
// device, so the distributed engine's NCCL transport moves them without a
// host copy (trainer/parallel/wire.h is the same format on the host; these
// kernels give the same values, summing in the same order). The wire holds
// rows of d values in fp32, bf16 or fp16 (round to nearest even).
//
//   PackRows     wire[u] = src[pick[u]] (pick null: src[u]), u < n
//   UnpackRows   dst[i] = wire[index[i]] (index null: wire[i]), i < rows;
//                with `first_only`, rows that are not the first of their
//                index value get zeros (the dedup gradient scatter)
//   PackSums     wire[u] = sum of src[rows[j]] over j in [start[u],
//                start[u+1]), in that order (the dedup gradient sum)
//
// One thread per value; the longest serial chain is PackSums' rows per
// unique token (at most top-k).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/precision.h"

namespace hetermoe::kernels {

cudaError_t LaunchPackRows(const float* src, const int32_t* pick, int64_t n, int64_t d, void* wire,
                           ComputeDtype wire_dtype, cudaStream_t stream);
// `first` (may be null unless first_only): 1 where row i is the first row of
// its index value.
cudaError_t LaunchUnpackRows(const void* wire, ComputeDtype wire_dtype, const int32_t* index, const uint8_t* first,
                             int64_t rows, int64_t d, float* dst, cudaStream_t stream);
cudaError_t LaunchPackSums(const float* src, const int32_t* start, const int32_t* rows, int64_t uniques, int64_t d,
                           void* wire, ComputeDtype wire_dtype, cudaStream_t stream);

}  // namespace hetermoe::kernels
