// Helpers of the GPU tests: a fixture that skips without a GPU, host<->device
// copies, random data and a tolerance check that names the worst element.
#pragma once

#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "kernels/caching_allocator.h"
#include "kernels/device.h"
#include "kernels/stream.h"

namespace hetermoe::testing {

// Every GPU test derives from this: without a usable device the test is
// skipped with the driver's reason (e.g. "CUDA driver version is insufficient
// for CUDA runtime version" on a machine with no GPU).
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (kernels::CudaDeviceCount(&why) == 0) GTEST_SKIP() << "no usable CUDA device: " << why;
    allocator_ = std::make_unique<kernels::CachingAllocator>(kernels::CudaMallocBacking());
    stream_ = std::make_unique<kernels::Stream>();
  }
  void TearDown() override {
    if (stream_) stream_->Synchronize();
  }

  cudaStream_t stream() const { return stream_->get(); }
  int Sm() const {
    int dev = 0;
    cudaDeviceProp p{};
    cudaGetDevice(&dev);
    cudaGetDeviceProperties(&p, dev);
    return p.major * 10 + p.minor;
  }

  template <typename T>
  kernels::DeviceBuffer<T> Up(const std::vector<T>& host) {
    kernels::DeviceBuffer<T> d(allocator_.get(), host.size());
    HM_CUDA_CHECK(cudaMemcpy(d.data(), host.data(), sizeof(T) * host.size(), cudaMemcpyHostToDevice));
    // A pageable cudaMemcpy may return before its DMA lands, and the test
    // stream does not order with the legacy stream: wait for the copy.
    HM_CUDA_CHECK(cudaDeviceSynchronize());
    return d;
  }
  template <typename T>
  kernels::DeviceBuffer<T> Empty(size_t n) {
    return kernels::DeviceBuffer<T>(allocator_.get(), n);
  }
  template <typename T>
  std::vector<T> Down(const kernels::DeviceBuffer<T>& d) {
    HM_CUDA_CHECK(cudaStreamSynchronize(stream()));
    std::vector<T> host(d.size());
    HM_CUDA_CHECK(cudaMemcpy(host.data(), d.data(), sizeof(T) * d.size(), cudaMemcpyDeviceToHost));
    return host;
  }

  std::unique_ptr<kernels::CachingAllocator> allocator_;
  std::unique_ptr<kernels::Stream> stream_;
};

inline std::vector<float> Random(size_t n, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline std::vector<float> Abs(std::vector<float> v) {
  for (float& x : v) x = std::abs(x);
  return v;
}

// Rounding bound of a sum of n products in fp32 (Higham's gamma_n with
// u = 2^-24): any order of evaluation, fused or not, lands within
// gamma_n * (sum of |terms|) of the exact sum. Two such results (the GPU's and
// the CPU's) differ by at most twice that.
inline double Gamma(int64_t n) {
  const double u = std::ldexp(1.0, -24);
  return n * u / (1.0 - n * u);
}

// fp32's unit roundoff: a correctly rounded operation (+ - * / sqrt, and an
// FMA, which rounds once) returns x (1 + d) with |d| <= kU.
constexpr double kU = 0x1p-24;
// expf's relative error on either side: CUDA's expf is within 2 ulp (CUDA C++
// Programming Guide, "Mathematical Functions", single precision), glibc's
// within 1; an ulp of x is at most 2 kU |x|.
constexpr double kExpRel = 4 * kU;

// |actual[i] - expected[i]| <= bound[i] for every element (bounds derived
// from each op's rounding, see the callers). Prints the worst element's error
// as a share of its bound, which says how tight the derivation is.
inline void ExpectWithinBound(const std::vector<float>& actual, const std::vector<float>& expected,
                              const std::vector<double>& bound, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  ASSERT_EQ(bound.size(), expected.size()) << what;
  size_t bad = 0, worst_at = 0;
  double worst = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double err = std::abs(double{actual[i]} - expected[i]);
    if (!(err <= bound[i])) ++bad;  // also catches nan
    const double share = bound[i] > 0 ? err / bound[i] : (err > 0 ? 1e30 : 0);
    if (share > worst) worst = share, worst_at = i;
  }
  std::printf("%s: worst error %.3f of its derived bound\n", what.c_str(), worst);
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << actual.size() << " elements outside the bound; worst ["
                     << worst_at << "] actual " << actual[worst_at] << " expected " << expected[worst_at]
                     << " bound " << bound[worst_at];
}

// |actual[i] - expected[i]| <= 2 gamma_n magnitude[i] (magnitude: the sum
// of |terms| of element i, the same sum computed on absolute values) plus
// one fp32 rounding of the result each side.
inline void ExpectWithinGemmBound(const std::vector<float>& actual, const std::vector<float>& expected,
                                  const std::vector<float>& magnitude, int64_t n, const std::string& what) {
  ASSERT_EQ(magnitude.size(), expected.size()) << what;
  std::vector<double> bound(expected.size());
  for (size_t i = 0; i < bound.size(); ++i)
    bound[i] = 2 * Gamma(n) * magnitude[i] * (1 + kU) + 2 * kU * std::abs(double{expected[i]});
  ExpectWithinBound(actual, expected, bound, what + " (2 gamma_" + std::to_string(n) + " |a||b|)");
}

// |actual - expected| <= atol + rtol * |expected| element-wise; on failure
// reports the worst element and how many failed.
inline void ExpectClose(const std::vector<float>& actual, const std::vector<float>& expected, double rtol,
                        double atol, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  size_t bad = 0, worst = 0;
  double worst_excess = -1;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double err = std::abs(double{actual[i]} - expected[i]);
    const double allowed = atol + rtol * std::abs(double{expected[i]});
    if (!(err <= allowed)) ++bad;  // also catches nan
    const double excess = std::isnan(err) ? 1e30 : err - allowed;
    if (excess > worst_excess) {
      worst_excess = excess;
      worst = i;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << actual.size() << " elements off; worst ["
                     << worst << "] actual " << actual[worst] << " expected " << expected[worst]
                     << " (rtol " << rtol << ", atol " << atol << ")";
}

}  // namespace hetermoe::testing
