#include "kernels/rows.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/common.cuh"

namespace hetermoe::kernels {
namespace {

__device__ __forceinline__ float Load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float Load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ float Load(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ void Store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void Store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }
__device__ __forceinline__ void Store(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }

template <typename W>
__global__ void PackRowsKernel(const float* src, const int32_t* pick, int64_t n, int64_t d, W* wire) {
  const int64_t i = GlobalThreadIndex();
  if (i >= n * d) return;
  const int64_t u = i / d, c = i % d;
  const int64_t row = pick ? pick[u] : u;
  Store(wire, i, src[row * d + c]);
}

template <typename W>
__global__ void UnpackRowsKernel(const W* wire, const int32_t* index, const uint8_t* first, int64_t rows, int64_t d,
                                 float* dst) {
  const int64_t i = GlobalThreadIndex();
  if (i >= rows * d) return;
  const int64_t r = i / d, c = i % d;
  if (first && !first[r]) {
    dst[i] = 0.0f;
    return;
  }
  const int64_t from = index ? index[r] : r;
  dst[i] = Load(wire, from * d + c);
}

template <typename W>
__global__ void PackSumsKernel(const float* src, const int32_t* start, const int32_t* rows, int64_t uniques, int64_t d,
                               W* wire) {
  const int64_t i = GlobalThreadIndex();
  if (i >= uniques * d) return;
  const int64_t u = i / d, c = i % d;
  float sum = 0.0f;
  for (int32_t j = start[u]; j < start[u + 1]; ++j) sum += src[static_cast<int64_t>(rows[j]) * d + c];
  Store(wire, i, sum);
}

template <typename W>
cudaError_t PackRowsAs(const float* src, const int32_t* pick, int64_t n, int64_t d, void* wire, cudaStream_t s) {
  HM_LAUNCH(PackRowsKernel<W>, BlocksFor(n * d, kThreadsPerBlock), kThreadsPerBlock, 0, s)
  (src, pick, n, d, static_cast<W*>(wire));
  return cudaGetLastError();
}

template <typename W>
cudaError_t UnpackRowsAs(const void* wire, const int32_t* index, const uint8_t* first, int64_t rows, int64_t d,
                         float* dst, cudaStream_t s) {
  HM_LAUNCH(UnpackRowsKernel<W>, BlocksFor(rows * d, kThreadsPerBlock), kThreadsPerBlock, 0, s)
  (static_cast<const W*>(wire), index, first, rows, d, dst);
  return cudaGetLastError();
}

template <typename W>
cudaError_t PackSumsAs(const float* src, const int32_t* start, const int32_t* rows, int64_t uniques, int64_t d,
                       void* wire, cudaStream_t s) {
  HM_LAUNCH(PackSumsKernel<W>, BlocksFor(uniques * d, kThreadsPerBlock), kThreadsPerBlock, 0, s)
  (src, start, rows, uniques, d, static_cast<W*>(wire));
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchPackRows(const float* src, const int32_t* pick, int64_t n, int64_t d, void* wire,
                           ComputeDtype wire_dtype, cudaStream_t stream) {
  if (n * d == 0) return cudaSuccess;
  switch (wire_dtype) {
    case ComputeDtype::kBf16: return PackRowsAs<__nv_bfloat16>(src, pick, n, d, wire, stream);
    case ComputeDtype::kFp16: return PackRowsAs<__half>(src, pick, n, d, wire, stream);
    default: return PackRowsAs<float>(src, pick, n, d, wire, stream);
  }
}

cudaError_t LaunchUnpackRows(const void* wire, ComputeDtype wire_dtype, const int32_t* index, const uint8_t* first,
                             int64_t rows, int64_t d, float* dst, cudaStream_t stream) {
  if (rows * d == 0) return cudaSuccess;
  switch (wire_dtype) {
    case ComputeDtype::kBf16: return UnpackRowsAs<__nv_bfloat16>(wire, index, first, rows, d, dst, stream);
    case ComputeDtype::kFp16: return UnpackRowsAs<__half>(wire, index, first, rows, d, dst, stream);
    default: return UnpackRowsAs<float>(wire, index, first, rows, d, dst, stream);
  }
}

cudaError_t LaunchPackSums(const float* src, const int32_t* start, const int32_t* rows, int64_t uniques, int64_t d,
                           void* wire, ComputeDtype wire_dtype, cudaStream_t stream) {
  if (uniques * d == 0) return cudaSuccess;
  switch (wire_dtype) {
    case ComputeDtype::kBf16: return PackSumsAs<__nv_bfloat16>(src, start, rows, uniques, d, wire, stream);
    case ComputeDtype::kFp16: return PackSumsAs<__half>(src, start, rows, uniques, d, wire, stream);
    default: return PackSumsAs<float>(src, start, rows, uniques, d, wire, stream);
  }
}

}  // namespace hetermoe::kernels
