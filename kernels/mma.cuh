// Tensor-core matrix products of one warp: mma.sync.aligned.m16n8k16 with
// bf16 or fp16 inputs and fp32 accumulators (sm_80 and newer), and the
// fragment loads from shared memory that go with it.
//
// Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point
// type"; g = lane / 4, t = lane % 4; a register holds two 16-bit values, the
// lower column or row in its low half):
//   A (16 x 16): a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..2t+1],
//                a[2] = A[g][2t+8..2t+9], a[3] = A[g+8][2t+8..2t+9];
//   B (16 x 8):  b[0] = B[2t..2t+1][g], b[1] = B[2t+8..2t+9][g];
//   C (16 x 8):  c[0], c[1] = C[g][2t], C[g][2t+1]; c[2], c[3] = C[g+8][2t..].
// C's layout for two adjacent 8-column tiles is A's layout for one 16-column
// tile, so a product's result feeds the next product without leaving the
// registers (FlashAttention-2's softmax(Q K^T) V): see AccumulatorsToA.
//
// On the CUDA emulator (kernels/emulator) MmaM16N8K16 is a warp operation
// that gathers the 32 lanes' fragments and computes D = A B + C with this
// layout, so a kernel that mixes up a fragment fails there as on a GPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace hetermoe::kernels {

// Two floats rounded to T16 (bf16 or fp16) packed in one register, x in the
// low half.
template <typename T16>
__device__ __forceinline__ uint32_t Pack2(float x, float y) {
  uint32_t bits;
  if constexpr (std::is_same_v<T16, __nv_bfloat16>) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(x, y);
    static_assert(sizeof(v) == sizeof(bits));
    memcpy(&bits, &v, sizeof bits);
  } else {
    const __half2 v = __floats2half2_rn(x, y);
    static_assert(sizeof(v) == sizeof(bits));
    memcpy(&bits, &v, sizeof bits);
  }
  return bits;
}

// c += A B for this warp's fragments (every lane of the warp calls it).
template <typename T16>
__device__ __forceinline__ void MmaM16N8K16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  static_assert(std::is_same_v<T16, __nv_bfloat16> || std::is_same_v<T16, __half>);
#if defined(HETERMOE_CUDA_EMULATOR)
  ::hetermoe::emulator::WarpMma({std::is_same_v<T16, __nv_bfloat16> ? ::hetermoe::emulator::MmaInput::kBf16
                                                                       : ::hetermoe::emulator::MmaInput::kFp16,
                                 a, b, c});
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T16, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // launchers refuse below sm_80 (FlashAttentionSupported)
#endif
}

// Fragment loads from a 16-bit matrix in shared memory whose rows are `ld`
// elements apart (ld even, so register-sized pairs stay aligned).
// A tile rows [0, 16) x columns [0, 16) of row-major `m` (rows = A's rows).
template <typename T16>
__device__ __forceinline__ void LoadA(const T16* m, int ld, int lane, uint32_t (&a)[4]) {
  const int g = lane / 4, t = lane % 4;
  const T16* p = m + g * ld + 2 * t;
  a[0] = *reinterpret_cast<const uint32_t*>(p);
  a[1] = *reinterpret_cast<const uint32_t*>(p + 8 * ld);
  a[2] = *reinterpret_cast<const uint32_t*>(p + 8);
  a[3] = *reinterpret_cast<const uint32_t*>(p + 8 * ld + 8);
}
// B (16 x 8) whose column n is row n of `m` (k contiguous): B[k][n] = m[n][k].
template <typename T16>
__device__ __forceinline__ void LoadB(const T16* m, int ld, int lane, uint32_t (&b)[2]) {
  const int g = lane / 4, t = lane % 4;
  const T16* p = m + g * ld + 2 * t;
  b[0] = *reinterpret_cast<const uint32_t*>(p);
  b[1] = *reinterpret_cast<const uint32_t*>(p + 8);
}

// The accumulators of two adjacent 8-column tiles (c0: columns 0-7, c1: 8-15)
// as the A fragment of the 16 x 16 product they form, rounded to T16.
template <typename T16>
__device__ __forceinline__ void AccumulatorsToA(const float (&c0)[4], const float (&c1)[4], uint32_t (&a)[4]) {
  a[0] = Pack2<T16>(c0[0], c0[1]);
  a[1] = Pack2<T16>(c0[2], c0[3]);
  a[2] = Pack2<T16>(c1[0], c1[1]);
  a[3] = Pack2<T16>(c1[2], c1[3]);
}

}  // namespace hetermoe::kernels
