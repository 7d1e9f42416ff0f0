// The CUDA device API, emulated on the CPU: what kernels/*.cu use inside
// kernels (threadIdx, __syncthreads, warp shuffles and ballots, shared
// memory) and the launch itself (HM_LAUNCH in kernels/launch.cuh).
//
// Every thread of a block runs as a fiber (Boost.Context) on the calling
// host thread; the block runner (block_runner.h) switches fibers at
// __syncthreads and at warp operations, so the kernels run as written, with
// their barriers and shuffles, and are checked for what a GPU would not
// forgive: a barrier or full-warp shuffle that some threads never reach, a
// launch configuration over the device's limits, a pointer argument that is
// not device memory. Blocks run one after another, so `__shared__` (a
// `static thread_local` here) is one copy per block as on a GPU, and the
// dynamic shared array is refilled with NaN bytes before each block so reads
// of unwritten shared memory show up in the results.
//
// Included first by every emulated translation unit (see CMakeLists.txt);
// it pulls in the real CUDA headers for types and host declarations, then
// replaces the device-side keywords and built-ins with the emulator's.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#undef __launch_bounds__
#define __launch_bounds__(...)
// One copy per host thread; blocks run one at a time on it, so one per block.
#define __shared__ static thread_local

namespace hetermoe::emulator {

// Where the running emulated thread is.
struct ThreadCoordinates {
  uint3 thread_idx{0, 0, 0}, block_idx{0, 0, 0};
  dim3 block_dim{1, 1, 1}, grid_dim{1, 1, 1};
};
const ThreadCoordinates& This();

void SyncThreads();
// One full-warp exchange: every lane passes its value (as 8 raw bytes) and
// gets the value of the lane `source(lane)` names.
enum class WarpOp { kShflXor, kShflDown, kShfl, kBallot, kSyncWarp, kMma };
uint64_t WarpExchange(WarpOp op, unsigned mask, uint64_t bits, int operand);
void* DynamicSharedMemory();

// One warp-wide tensor-core instruction, mma.sync.aligned.m16n8k16.row.col
// with fp32 accumulators (kernels/mma.cuh): every lane of the warp passes its
// fragments (a: 4 registers of two 16-bit values, b: 2, c: 4 floats, in the
// layout the PTX ISA documents) and gets its part of D = A B + C in c. The
// products are exact in fp32 and summed over k in order, then added to C.
enum class MmaInput { kBf16, kFp16 };
struct MmaFragments {
  MmaInput input;
  const uint32_t* a;
  const uint32_t* b;
  float* c;
};
void WarpMma(const MmaFragments& fragments);

template <typename T>
T* DynamicShared() {
  return static_cast<T*>(DynamicSharedMemory());
}

template <typename T>
T Shuffle(WarpOp op, unsigned mask, T v, int operand) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = WarpExchange(op, mask, bits, operand);
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

// --- launches ---
struct LaunchConfig {
  const char* kernel;
  dim3 grid, block;
  size_t shared_bytes;
  cudaStream_t stream;
};
// Validates the configuration against the emulated device's limits (an
// invalid one sets cudaGetLastError's error, as on a GPU) and puts the grid
// on the stream: `thread` runs once per thread of the grid when the stream's
// work runs (streams.h).
void RunGrid(const LaunchConfig& config, const std::function<void()>& thread);
// Throws when a pointer argument is neither null nor inside device memory
// from cudaMalloc (a host pointer handed to a kernel faults on a GPU).
void CheckKernelPointer(const char* kernel, int index, const void* p);

template <typename... Params>
class Launcher {
 public:
  Launcher(LaunchConfig config, void (*kernel)(Params...)) : config_(config), kernel_(kernel) {}
  template <typename... Args>
  void operator()(Args&&... args) const {
    // Arguments are converted and copied at launch, as the CUDA ABI does;
    // the grid runs later, with its stream's work (streams.h).
    auto params = std::make_shared<const std::tuple<std::decay_t<Params>...>>(std::forward<Args>(args)...);
    CheckPointers(*params, std::index_sequence_for<Params...>{});
    RunGrid(config_, [params, kernel = kernel_] { std::apply(kernel, *params); });
  }

 private:
  template <typename Tuple, size_t... I>
  void CheckPointers(const Tuple& params, std::index_sequence<I...>) const {
    (CheckOne(static_cast<int>(I), std::get<I>(params)), ...);
  }
  template <typename T>
  void CheckOne(int index, const T& value) const {
    if constexpr (std::is_pointer_v<T>) CheckKernelPointer(config_.kernel, index, value);
  }
  LaunchConfig config_;
  void (*kernel_)(Params...);
};

template <typename... Params>
Launcher<Params...> Launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                           size_t shared_bytes, cudaStream_t stream) {
  return Launcher<Params...>({name, grid, block, shared_bytes, stream}, kernel);
}

}  // namespace hetermoe::emulator

#define threadIdx (::hetermoe::emulator::This().thread_idx)
#define blockIdx (::hetermoe::emulator::This().block_idx)
#define blockDim (::hetermoe::emulator::This().block_dim)
#define gridDim (::hetermoe::emulator::This().grid_dim)
#define __syncthreads() ::hetermoe::emulator::SyncThreads()

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  return ::hetermoe::emulator::Shuffle(::hetermoe::emulator::WarpOp::kShflXor, mask, v, lane_mask);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta) {
  return ::hetermoe::emulator::Shuffle(::hetermoe::emulator::WarpOp::kShflDown, mask, v, static_cast<int>(delta));
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src_lane) {
  return ::hetermoe::emulator::Shuffle(::hetermoe::emulator::WarpOp::kShfl, mask, v, src_lane);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return static_cast<unsigned>(
      ::hetermoe::emulator::WarpExchange(::hetermoe::emulator::WarpOp::kBallot, mask, predicate != 0, 0));
}
// A barrier for the lanes of `mask` (each of them must reach it with the
// same mask): what code that shares data through memory between the lanes
// of a warp needs, since lanes need not run in lockstep.
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::hetermoe::emulator::WarpExchange(::hetermoe::emulator::WarpOp::kSyncWarp, mask, 0, 0);
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
// CUDA's device min/max overloads, for the integer types kernels mix.
template <typename T>
inline T min(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
inline T max(T a, T b) {
  return a < b ? b : a;
}
