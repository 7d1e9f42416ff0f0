#include "trainer/backend/cuda_exchange.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "common/error.h"
#include "kernels/cuda_check.h"
#include "kernels/rows.cuh"
#include "trainer/comm/nccl_communicator.h"

namespace hetermoe::backend {
namespace {

using comm::NcclCommunicator;
using comm::NcclDtype;
using kernels::ComputeDtype;

NcclDtype WireDtype(ComputeDtype c) {
  switch (c) {
    case ComputeDtype::kBf16: return NcclDtype::kBfloat16;
    case ComputeDtype::kFp16: return NcclDtype::kFloat16;
    default: return NcclDtype::kFloat32;
  }
}

class CudaRowExchange final : public model::RowExchange {
 public:
  CudaRowExchange(DeviceModel& m, const std::vector<std::string>& ids, int rank, int size,
                  std::chrono::milliseconds timeout)
      : m_(m), rank_(rank), wire_(m.policy.compute), dtype_(WireDtype(m.policy.compute)) {
    if (ids.size() != static_cast<size_t>(kChannels))
      throw Error("row exchange: need " + std::to_string(kChannels) + " NCCL ids, got " + std::to_string(ids.size()));
    for (const std::string& id : ids) {
      comm::NcclId nid{};
      if (id.size() != nid.size()) throw Error("row exchange: an NCCL id of " + std::to_string(id.size()) + " bytes");
      std::memcpy(nid.data(), id.data(), nid.size());
      comms_.push_back(std::make_unique<NcclCommunicator>(nid, rank, size, timeout));
    }
  }
  ~CudaRowExchange() override {
    for (auto& [id, g] : groups_)
      if (g.done) cudaEventDestroy(g.done);
  }

  std::string wire_format() const override { return std::string(kernels::ComputeDtypeName(wire_)); }
  size_t wire_value_bytes() const override { return comm::NcclDtypeBytes(dtype_); }

  int64_t Post(Channel c, std::vector<Send> sends, std::vector<Recv> recvs) override {
    const int64_t id = next_++;
    Group& g = groups_[id];
    g.channel = c;
    NcclCommunicator& comm = *comms_[c];
    const int64_t d = m_.config.hidden_size;
    const size_t wb = wire_value_bytes();
    std::vector<NcclCommunicator::Transfer> out, in;
    void* self_wire = nullptr;
    int64_t self_count = -1;
    // Pack after the compute that produced the rows.
    for (const Send& s : sends) {
      if (s.count == 0) continue;
      void* wire = g.Bytes(m_, s.count * d * wb);
      if (!s.sum_start.empty()) {
        HM_CUDA_CHECK(kernels::LaunchPackSums(s.rows, g.Ints(m_, s.sum_start, m_.s()), g.Ints(m_, s.sum_rows, m_.s()),
                                              s.count, d, wire, wire_, m_.s()));
      } else {
        HM_CUDA_CHECK(kernels::LaunchPackRows(s.rows, s.pick.empty() ? nullptr : g.Ints(m_, s.pick, m_.s()), s.count,
                                              d, wire, wire_, m_.s()));
      }
      if (s.peer == rank_) {
        if (self_wire) throw Error("row exchange: two sends to this rank in one group (one device copy per group)");
        self_wire = wire;
        self_count = s.count;
      } else {
        out.push_back({wire, static_cast<size_t>(s.count * d), s.peer});
      }
    }
    comm.After(m_.s());
    for (Recv& r : recvs) {
      if (r.count == 0 && r.n == 0) continue;
      void* wire = nullptr;
      if (r.peer == rank_) {
        if (self_count != r.count)
          throw Error("row exchange: a receive of " + std::to_string(r.count) + " rows from this rank itself has no "
                      "matching send in its group");
        wire = self_wire;
      } else {
        wire = g.Bytes(m_, r.count * d * wb);
        in.push_back({wire, static_cast<size_t>(r.count * d), r.peer});
      }
      g.unpacks.push_back({wire, std::move(r)});
    }
    comm.Group(out, in, dtype_);
    HM_CUDA_CHECK(cudaEventCreateWithFlags(&g.done, cudaEventDisableTiming));
    HM_CUDA_CHECK(cudaEventRecord(g.done, comm.stream()));
    return id;
  }

  // The host waits for the transfers (with the dead-peer timeout), then the
  // receives are unpacked on the compute stream, before the compute that
  // reads them. Nothing but NCCL runs on the channel's stream, so no kernel
  // launch or copy waits behind a transfer that may never come.
  void Wait(int64_t id) override {
    auto it = groups_.find(id);
    if (it == groups_.end()) {
      if (id >= 0 && id < next_) return;  // waited for before: done, and its buffers back
      throw Error("row exchange: no group " + std::to_string(id) + " to wait for");
    }
    Group& g = it->second;
    comms_[g.channel]->Wait(g.done);
    Unpack(g);
    // The group's buffers go back now, not at the step's end: the wire
    // buffers, which the channel's NCCL stream used, once an event there
    // says it is done with them (the allocator waits for it); the rest was
    // used on the compute stream only, in order before any later user.
    for (auto& b : g.bytes) m_.allocator.RecordStream(b.data(), comms_[g.channel]->stream());
    if (g.done) cudaEventDestroy(g.done);
    groups_.erase(it);
  }

  void WaitAll() override {
    for (auto& c : comms_) c->Wait();
    for (auto& [id, g] : groups_) Unpack(g);
    HM_CUDA_CHECK(cudaStreamSynchronize(m_.s()));
    for (auto& [id, g] : groups_)
      if (g.done) cudaEventDestroy(g.done);
    groups_.clear();
  }

 private:
  // A receive to unpack from its wire buffer once its group is complete
  // (the unpack is enqueued on the compute stream, which orders it before
  // any later use of the buffer there).
  struct PendingUnpack {
    void* wire;
    Recv recv;
  };
  // One posted group: its wire and index buffers, and its completion event.
  struct Group {
    Channel channel = kRows;
    cudaEvent_t done = nullptr;
    std::vector<PendingUnpack> unpacks;
    std::vector<kernels::DeviceBuffer<char>> bytes;
    std::vector<kernels::DeviceBuffer<int32_t>> ints;
    std::vector<kernels::DeviceBuffer<uint8_t>> flags;
    void* Bytes(DeviceModel& m, size_t n) {
      bytes.emplace_back(&m.allocator, n);
      return bytes.back().data();
    }
    const int32_t* Ints(DeviceModel& m, const std::vector<int32_t>& host, cudaStream_t s) {
      ints.emplace_back(&m.allocator, host.size());
      HM_CUDA_CHECK(cudaMemcpyAsync(ints.back().data(), host.data(), host.size() * sizeof(int32_t),
                                    cudaMemcpyHostToDevice, s));
      return ints.back().data();
    }
    const uint8_t* Flags(DeviceModel& m, const std::vector<uint8_t>& host, cudaStream_t s) {
      flags.emplace_back(&m.allocator, host.size());
      HM_CUDA_CHECK(cudaMemcpyAsync(flags.back().data(), host.data(), host.size(), cudaMemcpyHostToDevice, s));
      return flags.back().data();
    }
  };

  void Unpack(Group& g) {
    const int64_t d = m_.config.hidden_size;
    for (const PendingUnpack& u : g.unpacks) {
      const Recv& r = u.recv;
      const int32_t* index = r.index.empty() ? nullptr : g.Ints(m_, r.index, m_.s());
      const uint8_t* first = nullptr;
      if (r.first_only) {
        std::vector<uint8_t> flags(r.index.size(), 0);
        std::vector<bool> seen(static_cast<size_t>(r.count), false);
        for (size_t i = 0; i < r.index.size(); ++i)
          if (!seen[r.index[i]]) {
            seen[r.index[i]] = true;
            flags[i] = 1;
          }
        first = g.Flags(m_, flags, m_.s());
      }
      HM_CUDA_CHECK(kernels::LaunchUnpackRows(u.wire, wire_, index, first, r.n, d, r.rows, m_.s()));
    }
    g.unpacks.clear();
  }

  DeviceModel& m_;
  int rank_;
  ComputeDtype wire_;
  NcclDtype dtype_;
  std::vector<std::unique_ptr<NcclCommunicator>> comms_;  // per channel
  std::map<int64_t, Group> groups_;
  int64_t next_ = 0;
};

}  // namespace

std::string NewRowExchangeId() {
  const comm::NcclId id = comm::NewNcclId();
  return std::string(id.data(), id.size());
}

size_t RowExchangeIdBytes() { return sizeof(comm::NcclId); }

namespace {

class CudaGradReducer final : public model::GradReducer {
 public:
  CudaGradReducer(DeviceModel& m, const std::string& id, int rank, int size, std::chrono::milliseconds timeout)
      : m_(m) {
    comm::NcclId nid{};
    if (id.size() != nid.size()) throw Error("gradient reducer: an NCCL id of " + std::to_string(id.size()) + " bytes");
    std::memcpy(nid.data(), id.data(), nid.size());
    comm_ = std::make_unique<NcclCommunicator>(nid, rank, size, timeout);
  }
  void Post(const std::vector<model::BufferRange>& ranges) override {
    comm_->After(m_.s());
    for (const model::BufferRange& r : ranges)
      for (int64_t at = 0; at < r.count; at += kGradBucketFloats) {
        float* p = m_.grads.data() + r.offset + at;
        comm_->AllReduceSum(p, p, static_cast<size_t>(std::min(kGradBucketFloats, r.count - at)),
                            NcclDtype::kFloat32);
      }
  }
  // The compute stream is made to wait too: the optimizer reads the sums.
  void Wait() override {
    comm_->Wait();
    comm_->Before(m_.s());
  }
  void SumInPlace(float* p, int64_t n) override {
    comm_->After(m_.s());
    for (int64_t at = 0; at < n; at += kGradBucketFloats)
      comm_->AllReduceSum(p + at, p + at, static_cast<size_t>(std::min(kGradBucketFloats, n - at)),
                          NcclDtype::kFloat32);
    Wait();
  }

 private:
  DeviceModel& m_;
  std::unique_ptr<NcclCommunicator> comm_;
};

}  // namespace

std::unique_ptr<model::GradReducer> MakeCudaGradReducer(DeviceModel& model, const std::string& id, int rank,
                                                        int size, std::chrono::milliseconds timeout) {
  return std::make_unique<CudaGradReducer>(model, id, rank, size, timeout);
}

std::unique_ptr<model::RowExchange> MakeCudaRowExchange(DeviceModel& model, const std::vector<std::string>& ids,
                                                        int rank, int size, std::chrono::milliseconds timeout) {
  return std::make_unique<CudaRowExchange>(model, ids, rank, size, timeout);
}

}  // namespace hetermoe::backend
