// The kernel cost report: which CUDA kernels have a serial chain per thread
// that grows with the tokens N or the sequence length T, shown without a
// GPU. Runs the CUDA backend's forward and backward on the CPU emulator
// (kernels/emulator) for one layer of the tiny example model at three sizes, N0 = 2 x 256
// tokens (top-2: 1024 assignments, one full dispatch tile), 4N = 8 x 256
// (more sequences) and 4T = 2 x 1024 (longer sequences), and prints per
// kernel: threads launched, the run time of its longest thread at each size,
// the ratio to the first size, and at N0 the bytes of device memory it moved
// (counted by the emulator in a separate run) per floating-point operation
// of its formula (StepFlops): near 0.1 a kernel can be compute-bound on a
// modern GPU, above ~1 it is bound by memory bandwidth. (The optimizer's kernels scale with the
// parameters, not with N or T: not measured.)
//
// A kernel whose work per thread is bounded keeps its longest thread about
// as long when N grows 4x (more threads and blocks instead), a ratio near 1;
// one that loops over the tokens in a thread shows a ratio near 4. Only
// attention may grow with T (each query row loops over its keys). The
// experts' weight-gradient GEMM (DeviceSizedGemm*) loops over its expert's
// rows, the GEMM's reduction, as cuBLAS's would: it grows with N / E.
//
//   build/bench/kernels/kernel_cost [--precision fp32|bf16] [--repeat 2] [--quick]
//
// Times are the emulator's (one CPU core, a fiber per thread): compare the
// ratios, not the microseconds. Each size runs --repeat times (one layer of
// the model: every layer launches the same kernels), keeping each thread's
// smallest time, which filters interrupts, the hypervisor's pauses and the
// first run's page faults.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/mixtral_config.h"
#include "kernels/emulator/kernel_costs.h"
#include "trainer/backend/cuda_backend.h"
#include "trainer/model/parameters.h"

namespace hetermoe {
namespace {

struct Size {
  const char* name;
  int64_t batch, seq_len;
};

// Per kernel over one step: launches, threads, and the longest thread of
// its blocks (each block's time the minimum over the repeats; the 90th
// percentile over the blocks).
struct KernelCost {
  int64_t launches = 0, threads = 0;
  double longest_thread_us = 0;
  uint64_t bytes = 0;  // device memory read and written over the step
};
using Costs = std::map<std::string, KernelCost>;

Costs Measure(const io::MixtralConfig& config, const model::ParameterLayout& layout, const std::string& precision,
              const Size& size, int repeat) {
  backend::BackendOptions options;
  options.device = "cuda";
  options.precision = precision;
  backend::CudaBackend gpu(config, layout, options);
  backend::HostState host;
  host.params.assign(layout.total(), 0.0f);
  host.exp_avg.assign(layout.total(), 0.0f);
  host.exp_avg_sq.assign(layout.total(), 0.0f);
  model::InitParameters(layout, config.initializer_range, 1234, host.params.data());
  gpu.Upload(host);
  std::mt19937 rng(7);
  std::vector<int32_t> tokens(size.batch * size.seq_len + 1);
  for (auto& t : tokens) t = static_cast<int32_t>(rng() % config.vocab_size);
  const model::MicroBatch mb{tokens.data(), tokens.data() + 1, size.batch, size.seq_len};
  // The same step runs the same blocks, and their threads, in the same order
  // every time: keep each thread's shortest time over the repeats.
  std::vector<emulator::BlockCost> blocks;
  for (int r = 0; r < repeat; ++r) {
    emulator::EnableKernelCosts(true);
    gpu.ZeroGrads();
    gpu.ForwardBackward(mb, 1.0f);
    // The emulator runs queued work when something waits for it: all of
    // this step's before its blocks are taken.
    if (cudaDeviceSynchronize() != cudaSuccess) throw Error("kernel_cost: the step failed on the emulator");
    std::vector<emulator::BlockCost> run = emulator::TakeBlockCosts();
    if (blocks.empty()) {
      blocks = std::move(run);
      continue;
    }
    if (run.size() != blocks.size())
      throw Error("kernel_cost: repeat " + std::to_string(r) + " ran " + std::to_string(run.size()) +
                  " blocks, the first " + std::to_string(blocks.size()));
    for (size_t i = 0; i < run.size(); ++i) {
      if (std::strcmp(run[i].kernel, blocks[i].kernel) != 0)
        throw Error(std::string("kernel_cost: block ") + std::to_string(i) + " ran " + run[i].kernel + ", before " +
                    blocks[i].kernel);
      std::vector<int32_t>& kept = blocks[i].thread_ns;
      for (size_t t = 0; t < kept.size() && t < run[i].thread_ns.size(); ++t)
        kept[t] = std::min(kept[t], run[i].thread_ns[t]);
    }
  }
  // One more step counting the bytes each block moves (a separate run: the
  // count's lookups would slow the threads timed above).
  emulator::EnableKernelCosts(true, /*count_bytes=*/true);
  gpu.ZeroGrads();
  gpu.ForwardBackward(mb, 1.0f);
  if (cudaDeviceSynchronize() != cudaSuccess) throw Error("kernel_cost: the step failed on the emulator");
  std::map<std::string, uint64_t> bytes;
  for (const auto& b : emulator::TakeBlockCosts()) bytes[b.kernel] += b.global_bytes;
  emulator::EnableKernelCosts(false);
  // Per kernel: the 90th percentile over its blocks of the block's longest
  // thread (each thread's time its minimum over the runs). A chain that grows
  // in every block moves it; a pause that lands in a few blocks does not. (A
  // kernel of one block, or a few, is judged by its longest.)
  std::map<std::string, std::vector<int64_t>> per_kernel;
  Costs costs;
  for (const auto& b : blocks) {
    KernelCost& c = costs[b.kernel];
    c.launches += b.first_block;
    c.threads += static_cast<int64_t>(b.thread_ns.size());
    per_kernel[b.kernel].push_back(*std::max_element(b.thread_ns.begin(), b.thread_ns.end()));
  }
  for (auto& [name, times] : per_kernel) {
    std::sort(times.begin(), times.end());
    const size_t at = std::min(times.size() - 1, static_cast<size_t>(0.9 * static_cast<double>(times.size())));
    costs[name].longest_thread_us = times[at] / 1e3;
    costs[name].bytes = bytes[name];
  }
  return costs;
}

// Floating-point operations of one step's launches of a kernel (one layer,
// no recomputation), counted from the kernel's formula, an exp, a division
// or a square root counting as one; 0 for kernels that only move or index
// data, -1 for a kernel this table does not know.
double StepFlops(const std::string& kernel, const io::MixtralConfig& c, const Size& s) {
  const double N = static_cast<double>(s.batch * s.seq_len), T = static_cast<double>(s.seq_len);
  const double d = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads, hd = c.HeadDim();
  const double E = c.num_local_experts, k = c.num_experts_per_tok, f = c.intermediate_size, V = c.vocab_size;
  const double pairs = static_cast<double>(s.batch) * H * T * (T + 1) / 2;  // causal query-key pairs
  const double A = N * k;                                                   // routed rows
  const std::map<std::string, double> flops = {
      {"AttentionForwardKernel", pairs * (4 * hd + 6)},           // q.k, p v, online softmax
      {"AttentionBackwardQueryKernel", pairs * (6 * hd + 5)},     // p again, dp, dq
      {"AttentionBackwardKeyValueKernel", pairs * (8 * hd + 5)},  // p again, dv, dp, dk
      {"AttentionRowDotKernel", 2 * N * H * hd},                  // D = dO . O
      {"RmsNormForwardKernel", 3 * N * (4 * d + 4)},              // 3 norms: squares, sum, scale
      {"RmsNormBackwardInputKernel", 3 * N * 7 * d},
      {"ColumnTileSumsKernel_Values", 3 * N * d * 3},             // the norms' dw: dy x r, summed
      {"RopeKernel", 6 * N * (H + KV) * hd},                      // q and k, forward and backward
      {"RouterForwardKernel", N * 5 * E},
      {"RouterBackwardKernel", N * (4 * E + 3 * k)},
      {"SwiGluForwardKernel", A * f * 5},
      {"SwiGluBackwardKernel", A * f * 12},
      {"CombineKernel", 2 * A * d},
      {"CombineBackwardKernel", 3 * A * d},
      {"ScatterAddRowsKernel", A * d},
      {"CrossEntropyForwardKernel", 3 * N * V},
      {"CrossEntropyBackwardKernel", 4 * N * V},
      {"EmbeddingSegmentSumKernel", N * d},
      // The experts' GEMMs sized on the device: 3 forward, 6 backward, 2 A d f each.
      {"DeviceSizedGemmFp32Kernel", 9 * 2 * A * d * f},
      {"DeviceSizedGemmMmaKernel", 9 * 2 * A * d * f},
      {"GatherRowsKernel", 0},
      {"EmbeddingForwardKernel", 0},
      {"DispatchExpertScanKernel", 0},
      {"DispatchOffsetsKernel", 0},
      {"DispatchTileCountsKernel", 0},
      {"DispatchTileRowsKernel", 0},
  };
  const auto it = flops.find(kernel);
  return it == flops.end() ? -1 : it->second;
}

int Run(int argc, char** argv) {
  std::string precision = "fp32";
  int repeat = 2;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--precision") && i + 1 < argc)
      precision = argv[++i];
    else if (!std::strcmp(argv[i], "--quick"))
      quick = true;
    else if (!std::strcmp(argv[i], "--repeat") && i + 1 < argc)
      repeat = std::max(2, std::atoi(argv[++i]));
    else {
      std::fprintf(stderr, "usage: %s [--precision fp32|bf16|fp16] [--repeat N] [--quick]\n", argv[0]);
      return 2;
    }
  }
  // The shared-memory race check would add its bookkeeping to the threads'
  // times; the tests run it, the cost report measures without it.
  setenv("HETERMOE_EMULATED_RACES", "0", 0);
  io::MixtralConfig config = io::LoadMixtralConfig(HETERMOE_SOURCE_DIR "/examples/tiny/config.json");
  config.num_hidden_layers = 1;  // every layer launches the same kernels
  const model::ParameterLayout layout(config);
  const Size full[] = {{"N0", 2, 256}, {"4N", 8, 256}, {"4T", 2, 1024}};
  const Size small[] = {{"N0", 1, 64}, {"4N", 4, 64}, {"4T", 1, 256}};  // --quick: the tile not yet full
  const Size* sizes = quick ? small : full;
  std::vector<Costs> costs;
  for (int i = 0; i < 3; ++i) {
    const Size& s = sizes[i];
    std::fprintf(stderr, "measuring %s (%lld x %lld tokens, %s) ...\n", s.name, (long long)s.batch,
                 (long long)s.seq_len, precision.c_str());
    costs.push_back(Measure(config, layout, precision, s, repeat));
  }
  std::printf("kernel cost report: CUDA backend step of examples/tiny (%s) on the emulator\n", precision.c_str());
  std::printf("longest thread = run time of a block's longest thread, 90th percentile over the kernel's blocks (us); "
              "ratio = vs N0\n\n");
  std::printf("bytes = device memory the kernel's threads read and wrote over the N0 step (counted by the "
              "emulator); B/FLOP = those bytes per floating-point operation of its formula (StepFlops; "
              "'moves' = no arithmetic)\n\n");
  std::printf("%-36s %8s %8s %8s %8s %6s %8s %6s %10s %7s  %s\n", "kernel", "threads", "N0 us", "threads", "4N us",
              "ratio", "4T us", "ratio", "bytes", "B/FLOP", "serial chain");
  std::vector<std::string> grow_n, grow_t;
  for (const auto& [name, c0] : costs[0]) {
    const auto n = costs[1].find(name), t = costs[2].find(name);
    if (n == costs[1].end() || t == costs[2].end()) continue;
    const double rn = n->second.longest_thread_us / std::max(c0.longest_thread_us, 1e-3);
    const double rt = t->second.longest_thread_us / std::max(c0.longest_thread_us, 1e-3);
    // 4x the tokens: a chain proportional to them lands near 4; a bounded
    // one near 1 (noise has reached 2.3 for threads of about 1 us).
    constexpr double kGrows = 2.5;
    const char* verdict = rn >= kGrows ? "grows with N" : rt >= kGrows ? "grows with T" : "bounded";
    if (rn >= kGrows) grow_n.push_back(name);
    if (rn < kGrows && rt >= kGrows) grow_t.push_back(name);
    const double flops = StepFlops(name, config, sizes[0]);
    char intensity[16];
    if (flops > 0)
      std::snprintf(intensity, sizeof intensity, "%.2f", static_cast<double>(c0.bytes) / flops);
    else
      std::snprintf(intensity, sizeof intensity, "%s", flops == 0 ? "moves" : "?");
    std::printf("%-36.36s %8lld %8.1f %8lld %8.1f %6.2f %8.1f %6.2f %10llu %7s  %s\n", name.c_str(),
                (long long)c0.threads, c0.longest_thread_us, (long long)n->second.threads,
                n->second.longest_thread_us, rn, t->second.longest_thread_us, rt,
                static_cast<unsigned long long>(c0.bytes), intensity, verdict);
  }
  auto list = [](const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s.empty() ? std::string("none") : s;
  };
  std::printf("\nkernels whose longest thread grows with N: %s\n", list(grow_n).c_str());
  std::printf("kernels whose longest thread grows with T only: %s\n", list(grow_t).c_str());
  return 0;
}

}  // namespace
}  // namespace hetermoe

int main(int argc, char** argv) {
  try {
    return hetermoe::Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kernel_cost: %s\n", e.what());
    return 1;
  }
}
