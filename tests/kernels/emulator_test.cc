// The CUDA emulator itself (kernels/emulator): warp operations and barriers
// behave as CUDA defines them, and the kernel bugs it exists to catch are
// caught. Kernels here are written exactly as in kernels/*.cu.
#include "kernels/emulator/device_api.h"

#include <cublas_v2.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/common.cuh"
#include "kernels/emulator/block_runner.h"
#include "kernels/emulator/kernel_costs.h"
#include "kernels/emulator/register_model.h"
#include "kernels/emulator/global_races.h"
#include "kernels/emulator/shared_races.h"
#include "kernels/mma.cuh"

namespace hetermoe::kernels {
namespace {

using emulator::EmulatorError;

// Whether the environment turned an emulator setting off (NAME=0).
bool TurnedOff(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && std::string(v) == "0";
}

template <typename T>
struct Device {
  explicit Device(size_t n) : n(n) { EXPECT_EQ(cudaMalloc(&p, sizeof(T) * n), cudaSuccess); }
  ~Device() { cudaFree(p); }
  std::vector<T> Get() const {
    std::vector<T> h(n);
    EXPECT_EQ(cudaMemcpy(h.data(), p, sizeof(T) * n, cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }
  void Set(const std::vector<T>& h) { ASSERT_EQ(cudaMemcpy(p, h.data(), sizeof(T) * n, cudaMemcpyHostToDevice), cudaSuccess); }
  T* p = nullptr;
  size_t n;
};

__global__ void WarpOpsKernel(int* xor_out, int* down_out, unsigned* ballot_out, float* sum_out) {
  const int lane = threadIdx.x % kWarpSize;
  xor_out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, lane * 10, 3);
  down_out[threadIdx.x] = __shfl_down_sync(0xffffffffu, lane, 4);
  ballot_out[threadIdx.x] = __ballot_sync(0xffffffffu, lane % 3 == 0);
  sum_out[threadIdx.x] = WarpSum(static_cast<float>(threadIdx.x));
}

TEST(CudaEmulator, WarpShufflesBallotsAndReductionsFollowCuda) {
  Device<int> x(64), down(64);
  Device<unsigned> ballot(64);
  Device<float> sum(64);
  HM_LAUNCH(WarpOpsKernel, 1, 64, 0, nullptr)(x.p, down.p, ballot.p, sum.p);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  unsigned expected_ballot = 0;
  for (int l = 0; l < 32; l += 3) expected_ballot |= 1u << l;
  const auto xs = x.Get(), ds = down.Get();
  const auto bs = ballot.Get();
  const auto ss = sum.Get();
  for (int t = 0; t < 64; ++t) {
    const int lane = t % 32, warp = t / 32;
    EXPECT_EQ(xs[t], (lane ^ 3) * 10) << t;
    EXPECT_EQ(ds[t], lane + 4 < 32 ? lane + 4 : lane) << t;  // past the warp: own value
    EXPECT_EQ(bs[t], expected_ballot) << t;
    EXPECT_EQ(ss[t], 32 * 31 / 2 + warp * 32 * 32) << t;  // sum of the warp's thread indices
  }
}

__global__ void BlockSumKernel(const float* x, int64_t n, float* out) {
  __shared__ float scratch[kWarpSize];
  float v = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) v += x[blockIdx.x * n + i];
  const float total = BlockSum(v, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = total;
}

TEST(CudaEmulator, BarriersAndSharedMemoryArePerBlock) {
  const int blocks = 3, n = 1000;
  std::vector<float> h(blocks * n);
  std::iota(h.begin(), h.end(), 0.0f);
  Device<float> x(h.size()), out(blocks);
  x.Set(h);
  HM_LAUNCH(BlockSumKernel, blocks, 256, 0, nullptr)(x.p, n, out.p);
  const auto o = out.Get();
  for (int b = 0; b < blocks; ++b) {
    double expected = 0;
    for (int i = 0; i < n; ++i) expected += h[b * n + i];
    EXPECT_FLOAT_EQ(o[b], static_cast<float>(expected)) << b;
  }
}

// The kernel cost report's byte counts: each block of BlockSumKernel reads
// its n floats and writes one; its shared scratch and its locals do not
// count, and nothing is counted unless asked for.
TEST(CudaEmulator, KernelCostsCountTheDeviceBytesEachBlockMoves) {
  const int blocks = 3, n = 1000;
  Device<float> x(blocks * n), out(blocks);
  x.Set(std::vector<float>(blocks * n, 1.0f));
  for (const bool count : {false, true}) {
    emulator::EnableKernelCosts(true, count);
    HM_LAUNCH(BlockSumKernel, blocks, 256, 0, nullptr)(x.p, n, out.p);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<emulator::BlockCost> costs = emulator::TakeBlockCosts();
    emulator::EnableKernelCosts(false);
    ASSERT_EQ(costs.size(), static_cast<size_t>(blocks));
    for (const auto& c : costs) EXPECT_EQ(c.global_bytes, count ? 4u * n + 4u : 0u) << c.kernel;
  }
}

__global__ void DivergentBarrierKernel(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();  // only half the block gets here: a hang on a GPU
  }
  out[threadIdx.x] = 1.0f;
}

__global__ void EarlyReturnBeforeShuffleKernel(float* out) {
  if (threadIdx.x % kWarpSize == 31) return;  // not warp-uniform
  out[threadIdx.x] = WarpSum(1.0f);
}

__global__ void SumKernel(float* out) { out[threadIdx.x] = WarpSum(1.0f); }

TEST(CudaEmulator, CatchesDivergentBarriersAndPartialWarpShuffles) {
  Device<float> out(64);
  try {
    HM_LAUNCH(DivergentBarrierKernel, 2, 32, 0, nullptr)(out.p);
    cudaDeviceSynchronize();  // a kernel's fault shows at the next synchronisation
    FAIL() << "divergent __syncthreads not caught";
  } catch (const EmulatorError& e) {
    // Blocks run in a shuffled order: whichever ran first is named.
    EXPECT_NE(std::string(e.what()).find("kernel DivergentBarrierKernel, block ("), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("__syncthreads"), std::string::npos) << e.what();
  }
  try {
    HM_LAUNCH(EarlyReturnBeforeShuffleKernel, 1, 64, 0, nullptr)(out.p);
    cudaDeviceSynchronize();  // a kernel's fault shows at the next synchronisation
    FAIL() << "shuffle with a returned lane not caught";
  } catch (const EmulatorError& e) {
    EXPECT_NE(std::string(e.what()).find("threads 31 have returned"), std::string::npos) << e.what();
  }
  try {
    HM_LAUNCH(SumKernel, 1, 48, 0, nullptr)(out.p);  // the second warp has 16 lanes
    cudaDeviceSynchronize();  // a kernel's fault shows at the next synchronisation
    FAIL() << "shuffle in a partial warp not caught";
  } catch (const EmulatorError& e) {
    EXPECT_NE(std::string(e.what()).find("only 48 threads"), std::string::npos) << e.what();
  }
}

TEST(CudaEmulator, CatchesHostPointersBadCopiesAndBadLaunches) {
  std::vector<float> host(64);
  EXPECT_THROW(HM_LAUNCH(SumKernel, 1, 32, 0, nullptr)(host.data()), EmulatorError);
  Device<float> d(16);
  // A copy whose kind says host -> device but whose range overruns the allocation.
  EXPECT_THROW(cudaMemcpy(d.p, host.data(), sizeof(float) * 64, cudaMemcpyHostToDevice), EmulatorError);
  EXPECT_THROW(cudaMemcpy(host.data(), d.p, sizeof(float) * 16, cudaMemcpyHostToDevice), EmulatorError);
  // Over the limits of the device: the launch does not run and reports it.
  HM_LAUNCH(SumKernel, 1, 2048, 0, nullptr)(d.p);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  HM_LAUNCH(SumKernel, dim3(1, 70000), 32, 0, nullptr)(d.p);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  HM_LAUNCH(SumKernel, 1, 32, 64 * 1024, nullptr)(d.p);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // the last error resets once read
  void* p = nullptr;
  ASSERT_EQ(cudaMalloc(&p, 8), cudaSuccess);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
  EXPECT_EQ(cudaFree(p), cudaErrorInvalidValue);  // twice
  cudaGetLastError();
}

__global__ void DynamicSharedKernel(float* out, int write) {
  HM_DYNAMIC_SHARED(float, smem);
  if (write) smem[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = smem[(threadIdx.x + 1) % blockDim.x];
}

TEST(CudaEmulator, DynamicSharedMemoryStartsAsGarbage) {
  Device<float> out(64);
  HM_LAUNCH(DynamicSharedKernel, 2, 32, 32 * sizeof(float), nullptr)(out.p, 1);
  auto o = out.Get();
  for (int t = 0; t < 64; ++t) EXPECT_EQ(o[t], static_cast<float>((t % 32 + 1) % 32));
  HM_LAUNCH(DynamicSharedKernel, 2, 32, 32 * sizeof(float), nullptr)(out.p, 0);
  o = out.Get();
  for (float v : o) EXPECT_TRUE(std::isnan(v)) << "an unwritten shared read must not look like data";
}

// A planted missing barrier: thread 0 writes what every thread then reads,
// with (fixed) or without (buggy) __syncthreads between. The race check
// stops the buggy kernel whatever order its threads ran in.
__global__ void BroadcastKernel(float* out, int barrier) {
  HM_DYNAMIC_SHARED(float, smem);
  if (threadIdx.x == 0) smem[0] = 42.0f;
  if (barrier) __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = smem[0];
}

// The same bug on a static __shared__ array, between two warps: warp 0
// fills the table, warp 1 reads it (with or without a barrier).
__global__ void TableKernel(float* out, int barrier) {
  __shared__ float table[32];
  if (threadIdx.x < 32) table[threadIdx.x] = static_cast<float>(threadIdx.x);
  if (barrier) __syncthreads();
  if (threadIdx.x >= 32) out[threadIdx.x - 32] = table[63 - threadIdx.x];
}

std::string RaceError(const std::function<void()>& launch) {
  try {
    launch();
    cudaDeviceSynchronize();  // the launch runs with its stream's work
  } catch (const EmulatorError& e) {
    return e.what();
  }
  return "";
}

TEST(CudaEmulator, CatchesAMissingBarrierAsASharedMemoryRace) {
  if (TurnedOff("HETERMOE_EMULATED_RACES")) GTEST_SKIP() << "HETERMOE_EMULATED_RACES=0";
  Device<float> out(4 * 256);
  HM_LAUNCH(BroadcastKernel, 4, 256, sizeof(float), nullptr)(out.p, 1);
  for (float v : out.Get()) ASSERT_EQ(v, 42.0f) << "with the barrier every thread reads the write";
  std::string error = RaceError([&] { HM_LAUNCH(BroadcastKernel, 4, 256, sizeof(float), nullptr)(out.p, 0); });
  std::printf("%s\n", error.c_str());
  EXPECT_NE(error.find("kernel BroadcastKernel, block ("), std::string::npos) << error;
  EXPECT_NE(error.find("shared-memory race: thread "), std::string::npos) << error;
  EXPECT_NE(error.find("byte 0 of the dynamic shared memory"), std::string::npos) << error;
  EXPECT_NE(error.find("thread 0 writes"), std::string::npos) << error;
  EXPECT_NE(error.find("with no __syncthreads between them"), std::string::npos) << error;

  HM_LAUNCH(TableKernel, 1, 64, 0, nullptr)(out.p, 1);
  const auto o = out.Get();
  for (int t = 0; t < 32; ++t) ASSERT_EQ(o[t], static_cast<float>(31 - t));
  error = RaceError([&] { HM_LAUNCH(TableKernel, 1, 64, 0, nullptr)(out.p, 0); });
  std::printf("%s\n", error.c_str());
  EXPECT_NE(error.find("kernel TableKernel"), std::string::npos) << error;
  EXPECT_NE(error.find("TableKernel(float*, int)::table"), std::string::npos) << "names the array: " << error;
}

// Without the race check, the emulator's shuffled thread order (seed,
// default 1) still makes the missing barrier show as readers that run
// before the write and see the unwritten shared memory (NaN); in thread
// order (seed 0) the bug hides, since thread 0 runs first.
TEST(CudaEmulator, ShuffledThreadOrderExposesAMissingBarrier) {
  emulator::BlockRunner runner;
  auto stale_reads = [&](uint64_t seed) {
    runner.SetOrderSeed(seed);
    int stale = 0;
    for (unsigned b = 0; b < 4; ++b)
      runner.Run("BroadcastWithoutRaceCheck", dim3(4), dim3(256), uint3{b, 0, 0}, sizeof(float), [&] {
        float* smem = static_cast<float*>(emulator::BlockRunner::Active()->dynamic_shared());
        if (threadIdx.x == 0) smem[0] = 42.0f;
        stale += std::isnan(smem[0]);
      });
    return stale;
  };
  const int shuffled = stale_reads(1);
  std::printf("without the barrier %d of %d threads read shared memory before thread 0 wrote it\n", shuffled,
              4 * 256);
  EXPECT_GT(shuffled, 0) << "the missing barrier went unnoticed";
  EXPECT_EQ(stale_reads(0), 0);
  // And an error names the seed the threads ran in.
  runner.SetOrderSeed(7);
  try {
    runner.Run("DivergentInOrder", dim3(1), dim3(64), uint3{0, 0, 0}, 0, [&] {
      if (threadIdx.x < 32) __syncthreads();
    });
    FAIL() << "divergent barrier not caught";
  } catch (const EmulatorError& e) {
    EXPECT_NE(std::string(e.what()).find("seed 7"), std::string::npos) << e.what();
  }
}

// Planted races on device memory. Every block writes the same total
// (fixed: each block its own slot), the classic missing "one block per
// output"; and a block's thread 0 writes a global scratch value its other
// threads read with no __syncthreads between (fixed: with one).
__global__ void SharedTotalKernel(float* out, int per_block) {
  if (threadIdx.x == 0) out[per_block ? blockIdx.x : 0] = static_cast<float>(blockIdx.x);
}
__global__ void GlobalBroadcastKernel(float* scratch, float* out, int barrier) {
  if (threadIdx.x == 0) scratch[blockIdx.x] = 7.0f;
  if (barrier) __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = scratch[blockIdx.x];
}
// One block reads what another block writes in the same launch (a
// reduction's second pass folded into the first without a second launch).
__global__ void ReadOtherBlockKernel(float* partial, float* out) {
  if (threadIdx.x == 0) partial[blockIdx.x] = 1.0f;
  __syncthreads();
  if (blockIdx.x == 0 && threadIdx.x == 0) out[0] = partial[0] + partial[1];
}

TEST(CudaEmulator, CatchesRacesOnDeviceMemory) {
  if (TurnedOff("HETERMOE_EMULATED_RACES")) GTEST_SKIP() << "HETERMOE_EMULATED_RACES=0";
  Device<float> out(4 * 64), scratch(4);
  HM_LAUNCH(SharedTotalKernel, 4, 32, 0, nullptr)(out.p, 1);
  EXPECT_EQ(RaceError([] { cudaDeviceSynchronize(); }), "") << "each block its own slot";
  std::string error = RaceError([&] { HM_LAUNCH(SharedTotalKernel, 4, 32, 0, nullptr)(out.p, 0); });
  std::printf("%s\n", error.c_str());
  EXPECT_NE(error.find("kernel SharedTotalKernel"), std::string::npos) << error;
  EXPECT_NE(error.find("global-memory race: block ("), std::string::npos) << error;
  EXPECT_NE(error.find("thread 0 writes byte 0 of a 1024-byte device allocation"), std::string::npos) << error;
  EXPECT_NE(error.find("blocks of a grid run in no order"), std::string::npos) << error;

  HM_LAUNCH(GlobalBroadcastKernel, 4, 64, 0, nullptr)(scratch.p, out.p, 1);
  EXPECT_EQ(RaceError([] { cudaDeviceSynchronize(); }), "") << "with the barrier";
  for (float v : out.Get()) ASSERT_EQ(v, 7.0f);
  error = RaceError([&] { HM_LAUNCH(GlobalBroadcastKernel, 4, 64, 0, nullptr)(scratch.p, out.p, 0); });
  std::printf("%s\n", error.c_str());
  EXPECT_NE(error.find("kernel GlobalBroadcastKernel"), std::string::npos) << error;
  EXPECT_NE(error.find("with no __syncthreads between them"), std::string::npos) << error;

  error = RaceError([&] { HM_LAUNCH(ReadOtherBlockKernel, 2, 32, 0, nullptr)(scratch.p, out.p); });
  std::printf("%s\n", error.c_str());
  EXPECT_NE(error.find("kernel ReadOtherBlockKernel"), std::string::npos) << error;
  EXPECT_NE(error.find("byte 4 of a 16-byte device allocation"), std::string::npos)
      << "partial[1], block 1's, read by block 0: " << error;
}

// The device-memory detector's rules, access by access.
TEST(GlobalRaceDetector, OrdersByBarriersWithinABlockAndNeverAcrossBlocks) {
  emulator::GlobalRaceDetector d;
  d.StartLaunch();
  d.StartBlock(3);
  EXPECT_FALSE(d.Touch(0, 1000, 4, true));
  EXPECT_FALSE(d.Touch(0, 1000, 4, false)) << "a thread's own accesses are ordered";
  EXPECT_TRUE(d.Touch(1, 1000, 4, false)) << "same block, no barrier";
  d.Barrier();
  EXPECT_FALSE(d.Touch(1, 1000, 4, false)) << "the barrier orders the write before";
  EXPECT_FALSE(d.Touch(2, 1000, 4, false)) << "reads do not race with reads";
  d.StartBlock(0);
  auto race = d.Touch(1, 1002, 1, false);
  ASSERT_TRUE(race) << "another block's write";
  EXPECT_EQ(race->address, 1002u);
  EXPECT_EQ(race->earlier.block, 3u);
  EXPECT_EQ(race->earlier.thread, 0u);
  EXPECT_TRUE(race->earlier.write);
  EXPECT_EQ(race->later.block, 0u);
  d.Barrier();
  race = d.Touch(5, 1000, 4, true);
  ASSERT_TRUE(race) << "a barrier orders nothing across blocks";
  EXPECT_EQ(race->earlier.block, 3u);
  EXPECT_TRUE(race->earlier.write) << "block 3's write, checked before its reads";
  d.StartBlock(2);
  race = d.Touch(0, 2000, 4, false);
  EXPECT_FALSE(race);
  d.StartBlock(4);
  EXPECT_FALSE(d.Touch(1, 2000, 4, false));
  race = d.Touch(1, 2001, 1, true);
  ASSERT_TRUE(race) << "block 2's read, kept though block 4 read since";
  EXPECT_EQ(race->earlier.block, 2u);
  EXPECT_FALSE(race->earlier.write);
  EXPECT_FALSE(d.Touch(5, 4096 * 3 - 2, 4, true)) << "an access across a shadow page";
  d.StartBlock(1);
  EXPECT_TRUE(d.Touch(0, 4096 * 3 - 1, 1, false));
  // A new launch is ordered after the last one.
  d.StartLaunch();
  d.StartBlock(1);
  EXPECT_FALSE(d.Touch(9, 1000, 4, true));
  EXPECT_FALSE(d.Touch(9, 4096 * 3 - 2, 4, false));
}

// The detector's ordering rules, access by access.
TEST(SharedRaceDetector, OrdersByBarriersAndBySyncwarpOfBothLanes) {
  using Detector = emulator::SharedRaceDetector;
  Detector d;
  d.StartBlock(64, 16);
  EXPECT_FALSE(d.Touch(0, 0, 4, true));
  EXPECT_FALSE(d.Touch(0, 0, 4, false)) << "a thread's own accesses are ordered";
  auto race = d.Touch(1, 2, 4, false);
  ASSERT_TRUE(race);
  EXPECT_EQ(race->offset, 2u);
  EXPECT_EQ(race->earlier.thread, 0u);
  EXPECT_TRUE(race->earlier.write);
  EXPECT_EQ(race->later.thread, 1u);
  EXPECT_FALSE(race->later.write);
  EXPECT_FALSE(d.Touch(1, 4, 4, false)) << "bytes 4-7 were never written: reads do not race with reads";
  EXPECT_FALSE(d.Touch(2, 4, 4, false));

  d.Barrier();
  EXPECT_FALSE(d.Touch(5, 0, 4, false)) << "the barrier orders the write before";
  EXPECT_FALSE(d.Touch(6, 0, 4, false));
  race = d.Touch(6, 0, 1, true);
  ASSERT_TRUE(race) << "thread 5's read, kept though thread 6 read since";
  EXPECT_EQ(race->earlier.thread, 5u);

  // __syncwarp orders the lanes of its mask, transitively, and no others.
  d.Barrier();
  EXPECT_FALSE(d.Touch(0, 8, 4, true));
  d.WarpSync(0, 0x3u);  // lanes 0, 1
  d.WarpSync(0, 0x6u);  // lanes 1, 2
  EXPECT_FALSE(d.Touch(2, 8, 4, false)) << "0 -> 1 -> 2";
  EXPECT_TRUE(d.Touch(3, 8, 4, false)) << "lane 3 took part in neither";
  EXPECT_TRUE(d.Touch(32, 8, 4, false)) << "warp 1's lanes are not ordered by warp 0's __syncwarp";
  d.Barrier();
  EXPECT_FALSE(d.Touch(1, 12, 4, true));
  d.WarpSync(0, 0xffffffffu);
  EXPECT_FALSE(d.Touch(2, 12, 4, true));
  EXPECT_TRUE(d.Touch(1, 12, 4, false)) << "lane 2's write came after the __syncwarp";

  // Bytes marked as the emulator's own never race; a new block forgets all.
  d.Ignore(0, 4);
  d.Barrier();
  EXPECT_FALSE(d.Touch(0, 0, 4, true));
  EXPECT_FALSE(d.Touch(1, 0, 4, true));
  EXPECT_FALSE(d.Touch(1, 4, 4, true));
  d.StartBlock(64, 16);
  EXPECT_FALSE(d.Touch(2, 4, 4, true));
}

// A planted lockstep assumption: lanes swap values through shared memory,
// each writing its slot and reading its neighbour's. Lanes need not run in
// lockstep, so without __syncwarp the read may come before the neighbour's
// write: the race check stops it (without the check, the emulator's
// shuffled lanes make the read come first in some).
__global__ void NeighbourSwapKernel(float* out, int sync) {
  HM_DYNAMIC_SHARED(float, smem);
  smem[threadIdx.x] = static_cast<float>(threadIdx.x);
  if (sync) __syncwarp();
  out[blockIdx.x * blockDim.x + threadIdx.x] = smem[threadIdx.x ^ 1u];
}

// Half a warp reduces with mask 0x0000ffff; the other half takes no part.
__global__ void HalfWarpSumKernel(float* out) {
  float v = 1.0f;
  if (threadIdx.x % 32 < 16)
    for (int offset = 8; offset > 0; offset /= 2) v += __shfl_xor_sync(0x0000ffffu, v, offset);
  out[threadIdx.x] = v;
}

// A mask naming lanes that return instead of arriving.
__global__ void MaskWithAbsentLanesKernel(float* out) {
  if (threadIdx.x < 8) out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, 1.0f, 1);
}

TEST(CudaEmulator, SyncwarpAndPartialMasks) {
  const bool shuffled = !TurnedOff("HETERMOE_EMULATED_SEED");
  const bool races = !TurnedOff("HETERMOE_EMULATED_RACES");
  Device<float> out(4 * 64);
  HM_LAUNCH(NeighbourSwapKernel, 4, 64, 64 * sizeof(float), nullptr)(out.p, 1);
  auto o = out.Get();
  for (int t = 0; t < 4 * 64; ++t) ASSERT_EQ(o[t], static_cast<float>((t % 64) ^ 1)) << "with __syncwarp";
  if (races) {
    const std::string error =
        RaceError([&] { HM_LAUNCH(NeighbourSwapKernel, 4, 64, 64 * sizeof(float), nullptr)(out.p, 0); });
    std::printf("%s\n", error.c_str());
    EXPECT_NE(error.find("kernel NeighbourSwapKernel"), std::string::npos) << error;
    EXPECT_NE(error.find("no __syncwarp both lanes took part in"), std::string::npos) << error;
  } else if (shuffled) {
    HM_LAUNCH(NeighbourSwapKernel, 4, 64, 64 * sizeof(float), nullptr)(out.p, 0);
    int stale = 0;
    for (float v : out.Get()) stale += std::isnan(v);
    std::printf("without __syncwarp %d of %d lanes read their neighbour's slot before it was written\n", stale,
                4 * 64);
    EXPECT_GT(stale, 0) << "the missing __syncwarp went unnoticed";
  }

  Device<float> sums(64);
  HM_LAUNCH(HalfWarpSumKernel, 1, 64, 0, nullptr)(sums.p);
  o = sums.Get();
  for (int t = 0; t < 64; ++t) EXPECT_EQ(o[t], t % 32 < 16 ? 16.0f : 1.0f) << "lane " << t;

  try {
    HM_LAUNCH(MaskWithAbsentLanesKernel, 1, 32, 0, nullptr)(sums.p);
    cudaDeviceSynchronize();  // a kernel's fault shows at the next synchronisation
    FAIL() << "a mask whose lanes returned was not caught";
  } catch (const EmulatorError& e) {
    EXPECT_NE(std::string(e.what()).find("kernel MaskWithAbsentLanesKernel"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("with mask 0xffff, but threads 8-15 have returned"), std::string::npos)
        << e.what();
  }
}

// A planted unsynchronised device-to-host read: into page-locked memory
// cudaMemcpyAsync returns before the copy is done, so reading the host
// buffer before synchronising reads whatever is there. The emulator makes
// that NaN until the stream is synchronised (or an event after the copy
// completes); into pageable memory the copy is synchronous, as CUDA says.
TEST(CudaEmulator, PinnedDeviceToHostCopiesArePoisonedUntilSynchronised) {
  Device<float> d(4);
  d.Set({1.0f, 2.0f, 3.0f, 4.0f});
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  float* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(reinterpret_cast<void**>(&pinned), 4 * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(pinned, d.p, 4 * sizeof(float), cudaMemcpyDeviceToHost, stream), cudaSuccess);
  EXPECT_TRUE(std::isnan(pinned[2])) << "read before the stream was synchronised";
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(pinned[2], 3.0f);
  // Through an event recorded after the copy.
  cudaEvent_t done = nullptr;
  ASSERT_EQ(cudaEventCreate(&done), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(pinned, d.p, 4 * sizeof(float), cudaMemcpyDeviceToHost, stream), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(done, stream), cudaSuccess);
  EXPECT_TRUE(std::isnan(pinned[0]));
  ASSERT_EQ(cudaEventSynchronize(done), cudaSuccess);
  EXPECT_EQ(pinned[0], 1.0f);
  // Pageable memory: synchronous.
  std::vector<float> pageable(4, 0.0f);
  ASSERT_EQ(cudaMemcpyAsync(pageable.data(), d.p, 4 * sizeof(float), cudaMemcpyDeviceToHost, stream), cudaSuccess);
  EXPECT_EQ(pageable[3], 4.0f);
  EXPECT_EQ(cudaFreeHost(pinned), cudaSuccess);
  EXPECT_EQ(cudaEventDestroy(done), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
}

// Planted cross-stream bugs: work on one stream uses what another stream
// produces without an event between them. The emulator runs a stream's work
// only when something waits for it, so the consumer reads the data as it was
// before the producer (NaN here), not the producer's result by luck.
__global__ void FillKernel(float* x, float value) { x[threadIdx.x] = value; }
__global__ void CopyKernel(const float* x, float* y) { y[threadIdx.x] = x[threadIdx.x]; }

TEST(CudaEmulator, StreamsRunTheirWorkOnlyWhenWaitedFor) {
  if (TurnedOff("HETERMOE_EMULATED_DEFERRED")) GTEST_SKIP() << "HETERMOE_EMULATED_DEFERRED=0";
  Device<float> x(32), y(32);
  cudaStream_t producer = nullptr, consumer = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&producer, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamCreateWithFlags(&consumer, cudaStreamNonBlocking), cudaSuccess);
  cudaEvent_t ready = nullptr;
  ASSERT_EQ(cudaEventCreate(&ready), cudaSuccess);
  // The bug: no event between the streams.
  HM_LAUNCH(FillKernel, 1, 32, 0, producer)(x.p, 7.0f);
  HM_LAUNCH(CopyKernel, 1, 32, 0, consumer)(x.p, y.p);
  ASSERT_EQ(cudaStreamSynchronize(consumer), cudaSuccess);
  int stale = 0;
  for (float v : y.Get()) stale += std::isnan(v);
  EXPECT_EQ(stale, 32) << "the consumer ran before the producer it never waited for";
  ASSERT_EQ(cudaStreamSynchronize(producer), cudaSuccess);
  // Fixed: the consumer waits for an event recorded after the producer.
  HM_LAUNCH(FillKernel, 1, 32, 0, producer)(x.p, 8.0f);
  ASSERT_EQ(cudaEventRecord(ready, producer), cudaSuccess);
  ASSERT_EQ(cudaStreamWaitEvent(consumer, ready, 0), cudaSuccess);
  HM_LAUNCH(CopyKernel, 1, 32, 0, consumer)(x.p, y.p);
  ASSERT_EQ(cudaStreamSynchronize(consumer), cudaSuccess);
  for (float v : y.Get()) ASSERT_EQ(v, 8.0f);
  // A host buffer handed to an asynchronous copy from page-locked memory is
  // read when the copy runs: changing it before then changes what arrives.
  float* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(reinterpret_cast<void**>(&pinned), 32 * sizeof(float)), cudaSuccess);
  std::fill(pinned, pinned + 32, 1.0f);
  ASSERT_EQ(cudaMemcpyAsync(x.p, pinned, 32 * sizeof(float), cudaMemcpyHostToDevice, producer), cudaSuccess);
  std::fill(pinned, pinned + 32, 2.0f);
  ASSERT_EQ(cudaStreamSynchronize(producer), cudaSuccess);
  EXPECT_EQ(x.Get()[0], 2.0f);
  EXPECT_EQ(cudaFreeHost(pinned), cudaSuccess);
  EXPECT_EQ(cudaEventDestroy(ready), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(producer), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(consumer), cudaSuccess);
}

// cuBLAS runs on its handle's stream: a grouped GEMM whose device array of
// pointers is uploaded on another stream, without an event, reads the array
// before the upload and fails naming the call (on a GPU: garbage pointers).
TEST(CudaEmulator, CublasRunsOnItsHandlesStream) {
  if (TurnedOff("HETERMOE_EMULATED_DEFERRED")) GTEST_SKIP() << "HETERMOE_EMULATED_DEFERRED=0";
  Device<float> a(4), b(4), c(4);
  a.Set({1, 2, 3, 4});
  b.Set({1, 0, 0, 1});
  Device<const void*> pointers(3);
  const std::vector<const void*> host = {a.p, b.p, c.p};
  cudaStream_t upload = nullptr, compute = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&upload, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking), cudaSuccess);
  cublasHandle_t handle = nullptr;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasSetStream(handle, compute), CUBLAS_STATUS_SUCCESS);
  const cublasOperation_t op = CUBLAS_OP_N;
  const int two = 2, one = 1;
  const float alpha = 1.0f, beta = 0.0f;
  auto grouped = [&] {
    const void* const* p = pointers.p;
    return cublasGemmGroupedBatchedEx(handle, &op, &op, &two, &two, &two, &alpha, p, CUDA_R_32F, &two, p + 1,
                                      CUDA_R_32F, &two, &beta, const_cast<void* const*>(p + 2), CUDA_R_32F, &two,
                                      1, &one, CUBLAS_COMPUTE_32F);
  };
  ASSERT_EQ(cudaMemcpyAsync(pointers.p, host.data(), sizeof(void*) * 3, cudaMemcpyHostToDevice, upload),
            cudaSuccess);
  ASSERT_EQ(grouped(), CUBLAS_STATUS_SUCCESS);
  try {
    cudaStreamSynchronize(compute);
    FAIL() << "the GEMM read its pointer array before the upload";
  } catch (const EmulatorError& e) {
    std::printf("%s\n", e.what());
    EXPECT_NE(std::string(e.what()).find("cublasGemmGroupedBatchedEx"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("is not device memory"), std::string::npos) << e.what();
  }
  // Fixed: upload on the handle's stream.
  ASSERT_EQ(cudaMemcpyAsync(pointers.p, host.data(), sizeof(void*) * 3, cudaMemcpyHostToDevice, compute),
            cudaSuccess);
  ASSERT_EQ(grouped(), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cudaStreamSynchronize(compute), cudaSuccess);
  EXPECT_EQ(c.Get(), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(cublasDestroy(handle), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cudaStreamDestroy(upload), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(compute), cudaSuccess);
}

// One m16n8k16 product of a 16 x 16 A and a 16 x 8 B (both row-major in
// global memory, staged to shared memory as the attention kernels do: A
// row-major, B as its transpose), C written back row-major from the
// accumulator layout. `lanes` lanes take part (32 on a correct warp).
template <typename T16>
__global__ void MmaKernel(const float* a, const float* b, float* c, int lanes) {
  __shared__ T16 as[16 * 24];
  __shared__ T16 bts[8 * 24];
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) as[(i / 16) * 24 + i % 16] = T16(a[i]);
  for (int i = lane; i < 128; i += 32) bts[(i % 8) * 24 + i / 8] = T16(b[i]);  // B[k][n] -> bts[n][k]
  __syncwarp();
  if (lane >= lanes) return;
  uint32_t af[4], bf[2];
  LoadA(as, 24, lane, af);
  LoadB(bts, 24, lane, bf);
  float acc[4] = {1.0f, 1.0f, 1.0f, 1.0f};  // C = 1: the product is added to it
  MmaM16N8K16<T16>(acc, af, bf);
  for (int i = 0; i < 4; ++i) c[(lane / 4 + 8 * (i / 2)) * 8 + 2 * (lane % 4) + i % 2] = acc[i];
}

template <typename T16>
void ExpectMmaProduct() {
  std::vector<float> a(256), b(128);
  for (int i = 0; i < 256; ++i) a[i] = static_cast<float>((i * 7) % 13 - 6) / 4;  // exact in bf16 and fp16
  for (int i = 0; i < 128; ++i) b[i] = static_cast<float>((i * 5) % 11 - 5) / 2;
  Device<float> da(256), db(128), dc(128);
  da.Set(a);
  db.Set(b);
  HM_LAUNCH(MmaKernel<T16>, 1, 32, 0, nullptr)(da.p, db.p, dc.p, 32);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const auto c = dc.Get();
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      float expected = 1.0f;
      for (int k = 0; k < 16; ++k) expected += a[m * 16 + k] * b[k * 8 + n];
      EXPECT_EQ(c[m * 8 + n], expected) << m << "," << n;
    }
}

TEST(CudaEmulator, MmaComputesTheProductInThePtxFragmentLayout) {
  ExpectMmaProduct<__nv_bfloat16>();
  ExpectMmaProduct<__half>();
}

TEST(CudaEmulator, CatchesAnMmaNotEveryLaneReaches) {
  Device<float> a(256), b(128), c(128);
  a.Set(std::vector<float>(256, 1.0f));
  b.Set(std::vector<float>(128, 1.0f));
  try {
    HM_LAUNCH(MmaKernel<__nv_bfloat16>, 1, 32, 0, nullptr)(a.p, b.p, c.p, 16);
    cudaDeviceSynchronize();  // a kernel's fault shows at the next synchronisation
    FAIL() << "an mma.sync half the warp skipped was not caught";
  } catch (const EmulatorError& e) {
    EXPECT_NE(std::string(e.what()).find("wait at mma.sync"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("have returned"), std::string::npos) << e.what();
  }
}

// Writes x[0..n]: element n is one past the end.
__global__ void PastTheEndKernel(float* x, int n) {
  if (static_cast<int>(threadIdx.x) <= n) x[threadIdx.x] = 1.0f;
}

TEST(CudaEmulatorDeathTest, AnAccessPastTheEndOfAnAllocationAbortsNamingTheKernel) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  // In bounds: no fault.
  Device<float> fine(64);
  HM_LAUNCH(PastTheEndKernel, 1, 64, 0, nullptr)(fine.p, 63);
  EXPECT_EQ(fine.Get()[63], 1.0f);
  // One element past a 256-byte allocation: the guard page.
  EXPECT_DEATH(
      {
        float* p = nullptr;
        cudaMalloc(&p, 64 * sizeof(float));
        HM_LAUNCH(PastTheEndKernel, 1, 65, 0, nullptr)(p, 64);
        cudaDeviceSynchronize();
      },
      "kernel PastTheEndKernel, block \\(0,0,0\\): out-of-bounds access at .*, 0 bytes past the end of a "
      "256-byte device allocation");
}

__global__ void RegisterHungryKernel(float* out) { out[threadIdx.x] = 1.0f; }

TEST(CudaEmulator, ALaunchWhoseRegistersDoNotFitAnSmFails) {
  // As if ptxas gave the kernel 255 registers (no __launch_bounds__): 8
  // warps (256 threads) fill an SM's 65536, 1024 threads do not.
  emulator::SetKernelRegisters("RegisterHungryKernel", 255);
  Device<float> out(1024);
  HM_LAUNCH(RegisterHungryKernel, 1, 256, 0, nullptr)(out.p);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  HM_LAUNCH(RegisterHungryKernel, 1, 1024, 0, nullptr)(out.p);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchOutOfResources);
  // 64 registers (what __launch_bounds__(1024) makes ptxas fit) do.
  emulator::SetKernelRegisters("RegisterHungryKernel", 64);
  HM_LAUNCH(RegisterHungryKernel, 1, 1024, 0, nullptr)(out.p);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

// With the build's model (ctest sets HETERMOE_EMULATED_REGISTERS when nvcc
// exists), the project's kernels are in it, so every emulated test launches
// them under the check.
TEST(CudaEmulator, TheBuildsRegisterModelCoversTheKernels) {
  if (std::getenv("HETERMOE_EMULATED_REGISTERS") == nullptr) GTEST_SKIP() << "no register model (built without nvcc)";
  for (const char* kernel : {"RmsNormForwardKernel", "FlashAttentionBackwardKeyValueKernel<F>",
                             "DispatchTileCountsKernel", "AdamWKernel"})
    EXPECT_GT(emulator::KernelRegisters(kernel), 0) << kernel;
}

}  // namespace
}  // namespace hetermoe::kernels
