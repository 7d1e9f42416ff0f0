// Kernel benchmarks: each op of the CUDA backend at Mixtral-like sizes, timed
// with CUDA events (3 warm-up runs, then the mean of `iters`), printed as
// achieved TFLOP/s (compute-bound ops) or GB/s (memory-bound ops) and as a
// fraction of the device's peak.
//
// Peaks: memory bandwidth from the device attributes (2 x memory clock x bus
// width); tensor-core TFLOP/s from the planner's GPU profile table
// (planner/gpu_profiles) when the device name is known there, and an
// fp32 CUDA-core estimate (SMs x clock x 2 x cores per SM) for fp32 work.
//
// Attention FLOPs count the causal half of the two matmuls forward (4 B H T^2
// hd / 2) and of five backward; our backward recomputes the probabilities in
// two kernels, so its achieved rate is against that nominal count.
// cuDNN's fused attention is not benchmarked yet (it needs the cuDNN graph
// API); the line says so.
//
// Usage: kernel_bench [--quick]   (--quick: smaller sizes, fewer iterations)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "kernels/adamw.cuh"
#include "kernels/attention.cuh"
#include "kernels/caching_allocator.h"
#include "kernels/cast.cuh"
#include "kernels/cross_entropy.cuh"
#include "kernels/device.h"
#include "kernels/embedding.cuh"
#include "kernels/flash_attention.cuh"
#include "kernels/gemm.h"
#include "kernels/grouped_gemm.cuh"
#include "kernels/rmsnorm.cuh"
#include "kernels/stream.h"
#include "planner/gpu_profiles.h"

namespace hetermoe::kernels {
namespace {

struct Peaks {
  double bandwidth_gbs = 0;
  double fp32_tflops = 0;
  double fp16_tflops = 0, bf16_tflops = 0;  // 0 = unknown
};

int Fp32CoresPerSm(int major, int minor) {
  if (major == 7) return 64;
  if (major == 8 && minor == 0) return 64;
  if (major >= 8) return 128;
  return 64;
}

Peaks DevicePeaks(int device, const cudaDeviceProp& prop) {
  Peaks p;
  int mem_khz = 0, bus_bits = 0, sm_khz = 0;
  cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, device);
  cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device);
  cudaDeviceGetAttribute(&sm_khz, cudaDevAttrClockRate, device);
  p.bandwidth_gbs = 2.0 * mem_khz * 1e3 * (bus_bits / 8.0) / 1e9;
  p.fp32_tflops = prop.multiProcessorCount * (sm_khz * 1e3) * 2.0 * Fp32CoresPerSm(prop.major, prop.minor) / 1e12;
  const auto table = planner::GpuProfileTable::Builtin();
  if (const auto kind = table.Canonical(prop.name)) {
    const auto& profile = table.Find(*kind);
    p.fp16_tflops = profile.peak_fp16_tflops;
    p.bf16_tflops = profile.peak_bf16_tflops;
  }
  return p;
}

// Mean milliseconds of fn() over `iters` runs after 3 warm-ups.
double TimeMs(cudaStream_t stream, int iters, const std::function<void()>& fn) {
  for (int i = 0; i < 3; ++i) fn();
  Event start(true), stop(true);
  start.Record(stream);
  for (int i = 0; i < iters; ++i) fn();
  stop.Record(stream);
  stop.Synchronize();
  return Event::ElapsedMs(start, stop) / iters;
}

void Report(const char* name, double ms, double flops, double bytes, double peak_tflops, double peak_gbs) {
  std::printf("%-44s %9.3f ms", name, ms);
  if (flops > 0) {
    const double tf = flops / (ms * 1e-3) / 1e12;
    std::printf("  %8.2f TFLOP/s", tf);
    if (peak_tflops > 0) std::printf(" (%5.1f%% of %.0f)", 100 * tf / peak_tflops, peak_tflops);
  }
  if (bytes > 0) {
    const double gbs = bytes / (ms * 1e-3) / 1e9;
    std::printf("  %8.1f GB/s", gbs);
    if (peak_gbs > 0) std::printf(" (%5.1f%% of %.0f)", 100 * gbs / peak_gbs, peak_gbs);
  }
  std::printf("\n");
}

template <typename T>
T* DeviceZeros(size_t n) {
  T* p = nullptr;
  HM_CUDA_CHECK(cudaMalloc(&p, n * sizeof(T)));
  HM_CUDA_CHECK(cudaMemset(p, 0, n * sizeof(T)));
  return p;
}

int Run(bool quick) {
  int device = 0;
  HM_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  HM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  const Peaks peaks = DevicePeaks(device, prop);
  std::printf("device %d: %s (sm_%d%d, %d SMs); peak %.0f GB/s, fp32 %.1f TFLOP/s, fp16 %.0f, bf16 %.0f "
              "tensor TFLOP/s (0 = unknown)\n\n",
              device, prop.name, prop.major, prop.minor, prop.multiProcessorCount, peaks.bandwidth_gbs,
              peaks.fp32_tflops, peaks.fp16_tflops, peaks.bf16_tflops);
  Stream stream;
  BlasHandle blas(stream.get());
  const int iters = quick ? 5 : 20;

  // --- GEMMs: an expert's w1 at 4096 tokens (d 4096, f 14336 for Mixtral) ---
  {
    const int64_t M = quick ? 1024 : 4096, N = quick ? 2048 : 14336, K = quick ? 1024 : 4096;
    float* x = DeviceZeros<float>(M * K);
    float* W = DeviceZeros<float>(N * K);
    float* y = DeviceZeros<float>(M * N);
    uint16_t* x16 = DeviceZeros<uint16_t>(M * K);
    uint16_t* W16 = DeviceZeros<uint16_t>(N * K);
    const double flops = 2.0 * M * N * K;
    char name[96];
    std::snprintf(name, sizeof(name), "gemm fp32 %lldx%lldx%lld", (long long)M, (long long)N, (long long)K);
    Report(name, TimeMs(stream.get(), iters, [&] { LinearForward(blas.get(), ComputeDtype::kFp32, M, N, K, x, W, y, false); }),
           flops, 0, peaks.fp32_tflops, 0);
    std::snprintf(name, sizeof(name), "gemm fp16 %lldx%lldx%lld", (long long)M, (long long)N, (long long)K);
    Report(name, TimeMs(stream.get(), iters, [&] { LinearForward(blas.get(), ComputeDtype::kFp16, M, N, K, x16, W16, y, false); }),
           flops, 0, peaks.fp16_tflops, 0);
    if (prop.major >= 8) {
      std::snprintf(name, sizeof(name), "gemm bf16 %lldx%lldx%lld", (long long)M, (long long)N, (long long)K);
      Report(name, TimeMs(stream.get(), iters, [&] { LinearForward(blas.get(), ComputeDtype::kBf16, M, N, K, x16, W16, y, false); }),
             flops, 0, peaks.bf16_tflops, 0);
    }
    Report("cast fp32 -> bf16 (weights of one expert)",
           TimeMs(stream.get(), iters, [&] {
             HM_CUDA_CHECK(LaunchCastToBf16(W, N * K, reinterpret_cast<__nv_bfloat16*>(W16), stream.get()));
           }),
           0, 6.0 * N * K, 0, peaks.bandwidth_gbs);
    for (void* p : {(void*)x, (void*)W, (void*)y, (void*)x16, (void*)W16}) cudaFree(p);
  }

  // --- expert GEMMs: one layer's w1 over 8 experts with unequal token
  // counts (one expert empty), grouped (one cublasGemmGroupedBatchedEx) vs
  // one cublasGemmEx per expert, the baseline measured in the same run ---
  {
    const int64_t d = quick ? 1024 : 4096, f = quick ? 2048 : 14336, tokens = quick ? 2048 : 8192;
    const std::vector<double> share = {0.30, 0.20, 0.15, 0.12, 0.10, 0.08, 0.05, 0.0};  // of the k=2 assignments
    std::vector<int64_t> rows, first;
    int64_t total = 0;
    for (double sh : share) {
      first.push_back(total);
      rows.push_back(static_cast<int64_t>(sh * 2 * tokens));
      total += rows.back();
    }
    const int64_t E = static_cast<int64_t>(share.size());
    CachingAllocator allocator(CudaMallocBacking());
    ExpertGemms grouped(&allocator, stream.get());
    float* x = DeviceZeros<float>(total * d);
    float* W = DeviceZeros<float>(E * f * d);
    float* y = DeviceZeros<float>(total * f);
    std::vector<ExpertProblem> problems;
    for (int64_t e = 0; e < E; ++e) problems.push_back({rows[e], x + first[e] * d, W + e * f * d, y + first[e] * f});
    const double flops = 2.0 * total * f * d;
    char name[96];
    std::snprintf(name, sizeof(name), "experts w1 fp32, 8 experts, %lld rows (loop)", (long long)total);
    const double loop_ms = TimeMs(stream.get(), iters, [&] {
      for (const ExpertProblem& p : problems)
        LinearForward(blas.get(), ComputeDtype::kFp32, p.rows, f, d, p.a, p.b, p.c, false);
    });
    Report(name, loop_ms, flops, 0, peaks.fp32_tflops, 0);
    std::snprintf(name, sizeof(name), "experts w1 fp32, 8 experts (grouped)");
    const double grouped_ms =
        TimeMs(stream.get(), iters, [&] { grouped.Forward(blas.get(), ComputeDtype::kFp32, f, d, problems, false); });
    Report(name, grouped_ms, flops, 0, peaks.fp32_tflops, 0);
    std::printf("%-44s %.2fx the loop's time (%lld grouped calls, %lld single)\n", "  grouped / loop",
                grouped_ms / loop_ms, (long long)grouped.grouped_calls(), (long long)grouped.single_calls());
    // Our GEMM sized on the device (kernels/grouped_gemm.cuh: the sizes never
    // reach the host, so the trainer skips a copy and a stream sync per
    // layer that the cuBLAS calls above need and this time leaves out).
    std::vector<int32_t> host_offsets = {0};
    for (int64_t r : rows) host_offsets.push_back(static_cast<int32_t>(host_offsets.back() + r));
    int32_t* offsets = DeviceZeros<int32_t>(E + 1);
    HM_CUDA_CHECK(cudaMemcpy(offsets, host_offsets.data(), sizeof(int32_t) * (E + 1), cudaMemcpyHostToDevice));
    auto device_sized = [&](ComputeDtype dtype, const void* a, const void* w) {
      DeviceSizedGemm g;
      g.product = GroupedProduct::kForward;
      g.inputs = dtype;
      g.N = f;
      g.K = d;
      g.experts = E;
      g.offsets = offsets;
      g.max_rows = total;
      g.a = a;
      g.b = w;
      g.weight_stride = f * d;
      g.c = y;
      return TimeMs(stream.get(), iters, [&] { HM_CUDA_CHECK(LaunchDeviceSizedGemm(g, stream.get())); });
    };
    const double ours_ms = device_sized(ComputeDtype::kFp32, x, W);
    Report("experts w1 fp32, 8 experts (sized on device)", ours_ms, flops, 0, peaks.fp32_tflops, 0);
    std::printf("%-44s %.2fx cuBLAS grouped's time\n", "  sized on device / grouped", ours_ms / grouped_ms);
    if (DeviceSizedGemmSupported(ComputeDtype::kBf16, 10 * prop.major + prop.minor)) {
      uint16_t* x16 = DeviceZeros<uint16_t>(total * d);
      uint16_t* W16 = DeviceZeros<uint16_t>(E * f * d);
      std::vector<ExpertProblem> problems16;
      for (int64_t e = 0; e < E; ++e)
        problems16.push_back({rows[e], x16 + first[e] * d, W16 + e * f * d, y + first[e] * f});
      const double loop16_ms = TimeMs(stream.get(), iters, [&] {
        for (const ExpertProblem& p : problems16)
          LinearForward(blas.get(), ComputeDtype::kBf16, p.rows, f, d, p.a, p.b, p.c, false);
      });
      Report("experts w1 bf16, 8 experts (cuBLAS loop)", loop16_ms, flops, 0, peaks.bf16_tflops, 0);
      const double ours16_ms = device_sized(ComputeDtype::kBf16, x16, W16);
      Report("experts w1 bf16, 8 experts (sized on device)", ours16_ms, flops, 0, peaks.bf16_tflops, 0);
      std::printf("%-44s %.2fx the cuBLAS loop's time\n", "  sized on device / loop", ours16_ms / loop16_ms);
      for (void* p : {(void*)x16, (void*)W16}) cudaFree(p);
    }
    std::printf("\n");
    for (void* p : {(void*)x, (void*)W, (void*)y, (void*)offsets}) cudaFree(p);
  }

  // --- attention: Mixtral heads (32 query, 8 KV, hd 128) ---
  {
    const int64_t B = 1, T = quick ? 1024 : 4096, H = 32, KV = 8, hd = 128, N = B * T;
    float* q = DeviceZeros<float>(N * H * hd);
    float* k = DeviceZeros<float>(N * KV * hd);
    float* v = DeviceZeros<float>(N * KV * hd);
    float* out = DeviceZeros<float>(N * H * hd);
    float* dout = DeviceZeros<float>(N * H * hd);
    float* dq = DeviceZeros<float>(N * H * hd);
    float* dk = DeviceZeros<float>(N * KV * hd);
    float* dv = DeviceZeros<float>(N * KV * hd);
    float* lse = DeviceZeros<float>(B * H * T);
    float* D = DeviceZeros<float>(B * H * T);
    const AttentionDims dims{B, T, H, KV, hd};
    const double fwd_flops = 4.0 * B * H * T * T * hd / 2;
    char name[96];
    std::snprintf(name, sizeof(name), "attention fwd fp32 T=%lld H=%lld KV=%lld hd=%lld", (long long)T,
                  (long long)H, (long long)KV, (long long)hd);
    Report(name, TimeMs(stream.get(), iters, [&] { HM_CUDA_CHECK(LaunchAttentionForward(dims, q, k, v, out, lse, stream.get())); }),
           fwd_flops, 0, peaks.fp32_tflops, 0);
    std::snprintf(name, sizeof(name), "attention bwd fp32 T=%lld", (long long)T);
    Report(name, TimeMs(stream.get(), iters, [&] {
             HM_CUDA_CHECK(LaunchAttentionBackward(dims, q, k, v, out, lse, dout, D, dq, dk, dv, stream.get()));
           }),
           2.5 * fwd_flops, 0, peaks.fp32_tflops, 0);
    if (FlashAttentionSupported(dims, ComputeDtype::kBf16, 10 * prop.major + prop.minor)) {
      std::snprintf(name, sizeof(name), "attention fwd bf16 tensor cores T=%lld", (long long)T);
      const double flash_fwd_ms = TimeMs(stream.get(), iters, [&] {
        HM_CUDA_CHECK(LaunchFlashAttentionForward(dims, ComputeDtype::kBf16, q, k, v, out, lse, stream.get()));
      });
      Report(name, flash_fwd_ms, fwd_flops, 0, peaks.bf16_tflops, 0);
      std::snprintf(name, sizeof(name), "attention bwd bf16 tensor cores T=%lld", (long long)T);
      // The backward recomputes S twice (dq and dk/dv kernels): 3.5x the forward's
      // FLOPs executed; 2.5x is the useful work reported, as for the fp32 one.
      Report(name, TimeMs(stream.get(), iters, [&] {
               HM_CUDA_CHECK(LaunchFlashAttentionBackward(dims, ComputeDtype::kBf16, q, k, v, out, lse, dout, D,
                                                          dq, dk, dv, stream.get()));
             }),
             2.5 * fwd_flops, 0, peaks.bf16_tflops, 0);
    } else {
      std::printf("%-44s needs sm_80 or newer\n", "attention bf16 tensor cores");
    }
    for (void* p : {(void*)q, (void*)k, (void*)v, (void*)out, (void*)dout, (void*)dq, (void*)dk, (void*)dv,
                    (void*)lse, (void*)D})
      cudaFree(p);
  }

  // --- memory-bound ops ---
  {
    const int64_t N = quick ? 2048 : 8192, d = 4096, V = quick ? 8192 : 32000;
    float* x = DeviceZeros<float>(N * d);
    float* y = DeviceZeros<float>(N * d);
    float* w = DeviceZeros<float>(d);
    float* rstd = DeviceZeros<float>(N);
    float* logits = DeviceZeros<float>(N * V);
    float* loss = DeviceZeros<float>(N);
    int32_t* ids = DeviceZeros<int32_t>(N);
    float* norm_workspace = DeviceZeros<float>(std::max<int64_t>(1, RmsNormBackwardWorkspace(N, d)));
    // Token ids as text has them: a few frequent, most rare (id n^2 mod V).
    std::vector<int32_t> host_ids(N);
    for (int64_t n = 0; n < N; ++n) host_ids[n] = static_cast<int32_t>((n * n) % V);
    const EmbeddingGradPlan embed_plan = MakeEmbeddingGradPlan(host_ids.data(), N);
    const std::vector<int32_t> packed_plan = embed_plan.Packed();
    int32_t* device_plan = DeviceZeros<int32_t>(packed_plan.size());
    HM_CUDA_CHECK(cudaMemcpy(device_plan, packed_plan.data(), packed_plan.size() * sizeof(int32_t),
                             cudaMemcpyHostToDevice));
    HM_CUDA_CHECK(cudaMemcpy(ids, host_ids.data(), N * sizeof(int32_t), cudaMemcpyHostToDevice));
    float* embed_workspace = DeviceZeros<float>(std::max<int64_t>(1, EmbeddingBackwardWorkspace(embed_plan, d)));
    Report("rmsnorm fwd N x 4096", TimeMs(stream.get(), iters, [&] {
             HM_CUDA_CHECK(LaunchRmsNormForward(x, w, N, d, 1e-5f, y, rstd, stream.get()));
           }),
           0, 2.0 * N * d * 4, 0, peaks.bandwidth_gbs);
    Report("rmsnorm bwd N x 4096", TimeMs(stream.get(), iters, [&] {
             HM_CUDA_CHECK(LaunchRmsNormBackward(y, x, w, rstd, N, d, y, w, norm_workspace, stream.get()));
           }),
           0, 5.0 * N * d * 4, 0, peaks.bandwidth_gbs);
    Report("embedding fwd N x 4096", TimeMs(stream.get(), iters, [&] {
             HM_CUDA_CHECK(LaunchEmbeddingForward(x, ids, N, d, y, stream.get()));
           }),
           0, 2.0 * N * d * 4, 0, peaks.bandwidth_gbs);
    Report("embedding bwd N x 4096 (segments by id)", TimeMs(stream.get(), iters, [&] {
             HM_CUDA_CHECK(LaunchEmbeddingBackward(y, embed_plan, device_plan, d, embed_workspace, x, stream.get()));
           }),
           0, 3.0 * N * d * 4, 0, peaks.bandwidth_gbs);
    Report("cross-entropy fwd N x V", TimeMs(stream.get(), iters, [&] {
             HM_CUDA_CHECK(LaunchCrossEntropyForward(logits, ids, N, V, loss, stream.get()));
           }),
           0, 2.0 * N * V * 4, 0, peaks.bandwidth_gbs);
    Report("cross-entropy bwd N x V (in place)", TimeMs(stream.get(), iters, [&] {
             HM_CUDA_CHECK(LaunchCrossEntropyBackward(logits, ids, N, V, 1.0f, logits, stream.get()));
           }),
           0, 3.0 * N * V * 4, 0, peaks.bandwidth_gbs);
    // AdamW over N*d elements: reads p, g, m, v and writes p, m, v.
    const math::AdamWStep step = math::MakeAdamWStep(1e-4, 0.9, 0.95, 1e-8, 0.1, 1);
    Report("adamw N x 4096 params", TimeMs(stream.get(), iters, [&] {
             HM_CUDA_CHECK(LaunchAdamW(x, y, logits, logits + N * d, N * d, step, true, stream.get()));
           }),
           0, 7.0 * N * d * 4, 0, peaks.bandwidth_gbs);
    for (void* p : {(void*)x, (void*)y, (void*)w, (void*)rstd, (void*)logits, (void*)loss, (void*)ids,
                    (void*)norm_workspace, (void*)device_plan, (void*)embed_workspace})
      cudaFree(p);
  }
  return 0;
}

}  // namespace
}  // namespace hetermoe::kernels

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  std::string why;
  if (hetermoe::kernels::CudaDeviceCount(&why) == 0) {
    std::printf("kernel_bench: no usable CUDA device (%s); nothing to measure.\n", why.c_str());
    return 0;
  }
  try {
    return hetermoe::kernels::Run(quick);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kernel_bench: %s\n", e.what());
    return 1;
  }
}
