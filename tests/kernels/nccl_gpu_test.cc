// NcclCommunicator on the GPUs of one machine: one thread per GPU, each with
// its own communicator (as one process per GPU would have). Needs 1 GPU for
// the single-rank checks and 2 for exchanges and the dead-peer timeout;
// skipped otherwise with the reason.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <functional>
#include <thread>
#include <vector>

#include "common/error.h"
#include "kernels/cuda_check.h"
#include "kernels/device.h"
#include "trainer/comm/nccl_communicator.h"

namespace hetermoe::comm {
namespace {

using std::chrono::milliseconds;

// GPUs present, and why there are none when there are none.
int Gpus(std::string* why) { return kernels::CudaDeviceCount(why); }

std::vector<float> Download(const float* d, size_t n) {
  std::vector<float> h(n);
  HM_CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost));
  return h;
}

float* Upload(const std::vector<float>& h) {
  float* d = nullptr;
  HM_CUDA_CHECK(cudaMalloc(&d, std::max<size_t>(1, h.size()) * sizeof(float)));
  HM_CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
  return d;
}

// Runs body(rank) on `ranks` threads, rank r on GPU r; rethrows the first error.
void OnRanks(int ranks, const std::function<void(int)>& body) {
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(ranks);
  for (int r = 0; r < ranks; ++r)
    threads.emplace_back([&, r] {
      try {
        HM_CUDA_CHECK(cudaSetDevice(r));
        body(r);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

TEST(Nccl, SingleRankAllReduceAndSelfAllToAll) {
  std::string why;
  if (Gpus(&why) < 1) GTEST_SKIP() << "no usable CUDA device: " << why;
  NcclCommunicator comm(NewNcclId(), 0, 1, milliseconds(30000));
  const std::vector<float> x = {1, 2, 3};
  float* d = Upload(x);
  float* out = Upload(std::vector<float>(3, 0.0f));
  comm.AllReduceSum(d, out, 3, NcclDtype::kFloat32);
  comm.AllToAllV(d, {3}, out, {3}, NcclDtype::kFloat32);
  comm.Wait();
  EXPECT_EQ(Download(out, 3), x);
  cudaFree(d);
  cudaFree(out);
}

TEST(Nccl, AllToAllWithUnequalSplitsAndAllReduce) {
  std::string why;
  const int n = Gpus(&why);
  if (n < 2) GTEST_SKIP() << "needs 2 GPUs, found " << n << (why.empty() ? "" : ": " + why);
  const NcclId id = NewNcclId();
  // Rank r sends (r + 1) * (p + 1) values to rank p, value 100 r + p; rank
  // 0 sends nothing to itself (a zero split).
  OnRanks(n, [&](int r) {
    NcclCommunicator comm(id, r, n, milliseconds(30000));
    std::vector<size_t> send_counts(n), recv_counts(n);
    std::vector<float> send;
    for (int p = 0; p < n; ++p) {
      send_counts[p] = (r == 0 && p == 0) ? 0 : static_cast<size_t>((r + 1) * (p + 1));
      recv_counts[p] = (r == 0 && p == 0) ? 0 : static_cast<size_t>((p + 1) * (r + 1));
      send.insert(send.end(), send_counts[p], static_cast<float>(100 * r + p));
    }
    size_t total = 0;
    for (size_t c : recv_counts) total += c;
    float* d_send = Upload(send);
    float* d_recv = Upload(std::vector<float>(total, -1.0f));
    comm.AllToAllV(d_send, send_counts, d_recv, recv_counts, NcclDtype::kFloat32);
    float* d_sum = Upload(std::vector<float>{static_cast<float>(r + 1)});
    comm.AllReduceSum(d_sum, d_sum, 1, NcclDtype::kFloat32);
    comm.Wait();
    const auto recv = Download(d_recv, total);
    size_t off = 0;
    for (int p = 0; p < n; ++p)
      for (size_t i = 0; i < recv_counts[p]; ++i) EXPECT_EQ(recv[off++], 100 * p + r) << "from " << p;
    EXPECT_EQ(Download(d_sum, 1)[0], n * (n + 1) / 2);
    cudaFree(d_send);
    cudaFree(d_recv);
    cudaFree(d_sum);
  });
}

TEST(Nccl, DeadPeerBecomesAnErrorNamingTheOperation) {
  std::string why;
  const int n = Gpus(&why);
  if (n < 2) GTEST_SKIP() << "needs 2 GPUs, found " << n << (why.empty() ? "" : ": " + why);
  const NcclId id = NewNcclId();
  // Rank 1 joins but never sends: rank 0's receive must time out.
  std::string message;
  OnRanks(2, [&](int r) {
    NcclCommunicator comm(id, r, 2, milliseconds(2000));
    if (r == 1) return;  // leaves without sending (its destructor may abort)
    float* d = Upload(std::vector<float>(4, 0.0f));
    comm.Recv(d, 4, NcclDtype::kFloat32, 1);
    try {
      comm.Wait();
    } catch (const Error& e) {
      message = e.what();
    }
    cudaFree(d);
  });
  EXPECT_NE(message.find("receive of 4 fp32 from rank 1"), std::string::npos) << message;
}

}  // namespace
}  // namespace hetermoe::comm
