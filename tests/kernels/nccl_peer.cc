// One rank of a multi-process NcclCommunicator test (nccl_process_test.cc
// starts one process per rank, as a job runs one per GPU):
//
//   nccl_peer <hex unique id> <rank> <ranks> <scenario> <timeout ms>
//
// Scenarios:
//   exchange    unequal all-to-all, all-reduce, and a large SendRecv around
//               the ring; prints "ok" when every value is right.
//   die         rank 1 exits right after joining; rank 0 waits for a
//               receive from it and prints the error.
//   ungrouped   both ranks Send a large message, then Recv one: each send
//               waits for a receive that runs only after it, so both must
//               end in the timeout error, which is printed.
// Exit status 0 when the scenario's expectation held, 1 otherwise (the
// output says why).
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels/cuda_check.h"
#include "trainer/comm/nccl_communicator.h"

using hetermoe::comm::NcclCommunicator;
using hetermoe::comm::NcclDtype;
using hetermoe::comm::NcclId;

namespace {

float* Upload(const std::vector<float>& h) {
  float* d = nullptr;
  HM_CUDA_CHECK(cudaMalloc(&d, std::max<size_t>(1, h.size()) * sizeof(float)));
  HM_CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
  return d;
}

std::vector<float> Download(const float* d, size_t n) {
  std::vector<float> h(n);
  HM_CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost));
  return h;
}

NcclId FromHex(const std::string& hex) {
  NcclId id{};
  for (size_t i = 0; i < id.size() && 2 * i + 1 < hex.size(); ++i)
    id[i] = static_cast<char>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  return id;
}

int Exchange(NcclCommunicator& comm, int r, int n) {
  std::vector<size_t> send_counts(n), recv_counts(n);
  std::vector<float> send;
  for (int p = 0; p < n; ++p) {
    send_counts[p] = static_cast<size_t>((r + 1) * (p + 1));
    recv_counts[p] = static_cast<size_t>((p + 1) * (r + 1));
    send.insert(send.end(), send_counts[p], static_cast<float>(100 * r + p));
  }
  size_t total = 0;
  for (size_t c : recv_counts) total += c;
  float* d_send = Upload(send);
  float* d_recv = Upload(std::vector<float>(total, -1.0f));
  comm.AllToAllV(d_send, send_counts, d_recv, recv_counts, NcclDtype::kFloat32);
  float* d_sum = Upload({static_cast<float>(r + 1)});
  comm.AllReduceSum(d_sum, d_sum, 1, NcclDtype::kFloat32);
  const size_t big = size_t{1} << 20;  // above any eager size
  float* d_big = Upload(std::vector<float>(big, static_cast<float>(r)));
  float* d_in = Upload(std::vector<float>(big, -1.0f));
  comm.SendRecv(d_big, big, (r + 1) % n, d_in, big, (r + n - 1) % n, NcclDtype::kFloat32);
  comm.Wait();
  int bad = 0;
  const auto recv = Download(d_recv, total);
  size_t off = 0;
  for (int p = 0; p < n; ++p)
    for (size_t i = 0; i < recv_counts[p]; ++i) bad += recv[off++] != 100 * p + r;
  bad += Download(d_sum, 1)[0] != n * (n + 1) / 2;
  for (float v : Download(d_in, big)) bad += v != static_cast<float>((r + n - 1) % n);
  if (bad) {
    std::printf("rank %d: %d wrong values\n", r, bad);
    return 1;
  }
  std::printf("ok\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: nccl_peer <hex id> <rank> <ranks> <scenario> <timeout ms>\n");
    return 2;
  }
  const NcclId id = FromHex(argv[1]);
  const int r = std::atoi(argv[2]), n = std::atoi(argv[3]);
  const std::string scenario = argv[4];
  const std::chrono::milliseconds timeout(std::atoi(argv[5]));
  try {
    int devices = 0;
    HM_CUDA_CHECK(cudaGetDeviceCount(&devices));
    HM_CUDA_CHECK(cudaSetDevice(r % devices));
    NcclCommunicator comm(id, r, n, timeout);
    if (scenario == "exchange") return Exchange(comm, r, n);
    if (scenario == "die") {
      if (r == 1) std::_Exit(3);
      float* d = Upload(std::vector<float>(4, 0.0f));
      comm.Recv(d, 4, NcclDtype::kFloat32, 1);
      comm.Wait();
      std::printf("rank 0: the receive from the dead rank completed\n");
      return 1;
    }
    if (scenario == "ungrouped") {
      const size_t big = size_t{1} << 20;
      float* out = Upload(std::vector<float>(big, 1.0f));
      float* in = Upload(std::vector<float>(big, 0.0f));
      comm.Send(out, big, NcclDtype::kFloat32, 1 - r);
      comm.Recv(in, big, NcclDtype::kFloat32, 1 - r);
      comm.Wait();
      std::printf("rank %d: the ungrouped exchange completed\n", r);
      return 1;
    }
    std::printf("unknown scenario %s\n", scenario.c_str());
    return 2;
  } catch (const hetermoe::Error& e) {
    std::printf("error: %s\n", e.what());
    return scenario == "exchange" ? 1 : 0;
  }
}
