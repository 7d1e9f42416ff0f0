// The distributed engine's state in and out (engine_impl.h): a rank's
// tensors from a whole-model or own-tensors state, the whole model gathered
// on rank 0, and checkpoints streamed tensor by tensor from their holders.
#include "trainer/parallel/engine_impl.h"

#include <algorithm>
#include <cstring>

#include "common/error.h"

namespace hetermoe::parallel {

// Device optimizer: the device's parameters and moments into the host buffers.
void DistributedBackend::Impl::PullState() {
  if (device_step) device->GetState(params.data(), adamw->exp_avg().data(), adamw->exp_avg_sq().data());
}

void DistributedBackend::Upload(const backend::HostState& s) {
  Impl& m = *impl_;
  const int64_t n = static_cast<int64_t>(s.params.size());
  const bool whole = n == m.layout.total();
  if ((!whole && n != m.own.local.total()) || static_cast<int64_t>(s.exp_avg.size()) != n ||
      static_cast<int64_t>(s.exp_avg_sq.size()) != n)
    throw Error("distributed upload: a state of " + std::to_string(n) + " parameters is neither the whole model (" +
                std::to_string(m.layout.total()) + ") nor this rank's tensors (" + std::to_string(m.own.local.total()) +
                ")");
  const auto& ts = m.layout.tensors();
  for (size_t i = 0; i < ts.size(); ++i) {
    if (!m.own.owned[i]) continue;
    const int64_t at = m.own.local_offset[i];
    const int64_t from = whole ? ts[i].offset : at;
    std::copy_n(s.params.begin() + from, ts[i].numel, m.params.begin() + at);  // in place: the CPU device aliases it
    if (m.own.moments[i]) {
      std::copy_n(s.exp_avg.begin() + from, ts[i].numel, m.Moment(1, i));
      std::copy_n(s.exp_avg_sq.begin() + from, ts[i].numel, m.Moment(2, i));
    }
  }
  m.PushState(s.optimizer_step);
}

float* DistributedBackend::HostParams() { return impl_->params.data(); }

void DistributedBackend::ParamsWritten() { impl_->PushState(0); }

void DistributedBackend::Impl::PushState(int64_t optimizer_step) {
  adamw->set_step(optimizer_step);
  if (device_step) {
    device->SetState(params.data(), adamw->exp_avg().data(), adamw->exp_avg_sq().data(), optimizer_step);
    return;
  }
  std::vector<size_t> all;  // every tensor this rank holds, by local index
  for (size_t i = 0; i < own.owned.size(); ++i)
    if (own.owned[i]) all.push_back(all.size());
  device->SetParams(params.data(), all);
}

void DistributedBackend::Download(backend::HostState* s) {
  Impl& m = *impl_;
  if (m.own.zero)
    throw Error("distributed download: with train.zero 1 no rank holds every dense moment; "
                "checkpoints stream them (StreamCheckpoint)");
  m.PullState();
  // Rank 0 gathers group 0's experts (params and both moments) from their owners.
  if (m.group != 0) return;
  const auto& ts = m.layout.tensors();
  const uint32_t tag = 1u << 30;
  auto pack_size = [&](const std::vector<size_t>& list) {
    size_t n = 0;
    for (size_t i : list) n += ts[i].numel;
    return 3 * n;
  };
  const std::vector<float>* mine[] = {&m.params, &m.adamw->exp_avg(), &m.adamw->exp_avg_sq()};
  if (rank_ == 0) {
    for (std::vector<float>* dst : {&s->params, &s->exp_avg, &s->exp_avg_sq}) dst->assign(m.layout.total(), 0.0f);
    s->optimizer_step = m.adamw->step();
    std::vector<float>* whole[] = {&s->params, &s->exp_avg, &s->exp_avg_sq};
    for (size_t i = 0; i < ts.size(); ++i) {
      if (!m.own.owned[i]) continue;
      for (int b = 0; b < 3; ++b)
        std::copy_n(mine[b]->begin() + m.own.local_offset[i], ts[i].numel, whole[b]->begin() + ts[i].offset);
    }
    for (int o = 1; o < m.P; ++o) {
      const auto& list = m.own.group_experts[o];
      if (list.empty()) continue;
      std::vector<float> buf(pack_size(list));
      m.everyone->Irecv(buf.data(), buf.size() * sizeof(float), o, tag)->Wait();
      size_t at = 0;
      for (std::vector<float>* dst : whole)
        for (size_t i : list) {
          std::memcpy(dst->data() + ts[i].offset, buf.data() + at, ts[i].numel * sizeof(float));
          at += ts[i].numel;
        }
    }
  } else if (!m.own.owned_expert_tensors.empty()) {
    std::vector<float> buf;
    buf.reserve(pack_size(m.own.owned_expert_tensors));
    for (const std::vector<float>* src : mine)
      for (size_t i : m.own.owned_expert_tensors) {
        const auto begin = src->begin() + m.own.local_offset[i];
        buf.insert(buf.end(), begin, begin + ts[i].numel);
      }
    m.everyone->Isend(buf.data(), buf.size() * sizeof(float), 0, tag)->Wait();
  }
  if (rank_ == 0) m.ToOriginalOrder(s);
}

void DistributedBackend::StreamCheckpoint(const std::function<void(const TensorFetch& fetch)>& write) {
  Impl& m = *impl_;
  // Rank 0 asks group 0's other ranks for their experts and, with ZeRO-1,
  // the attention ranks of every group for the moments of their shards.
  std::vector<int> servers;
  for (int o = 1; o < m.P; ++o) servers.push_back(m.placement.GlobalRank(0, o));
  if (m.own.zero)
    for (int g = 1; g < m.placement.groups; ++g)
      for (int x = 0; x < m.M; ++x) servers.push_back(m.placement.GlobalRank(g, x));
  if (rank_ != 0 && std::find(servers.begin(), servers.end(), rank_) == servers.end()) return;
  m.PullState();
  constexpr uint32_t kRequest = (1u << 30) + 1, kReply = (1u << 30) + 2;
  const auto& ts = m.layout.tensors();
  // Tensor i of buffer b (0 parameters, 1 exp_avg, 2 exp_avg_sq) here, or null.
  auto mine = [&](size_t i, int64_t b) -> const float* {
    if (!m.own.owned[i] || (b != 0 && !m.own.moments[i])) return nullptr;
    return b == 0 ? m.Param(i) : m.Moment(static_cast<int>(b), i);
  };
  if (rank_ != 0) {
    // Serve rank 0's requests: {tensor, buffer, first, count}, or tensor -1
    // when it is done.
    for (;;) {
      int64_t request[4];
      m.everyone->Irecv(request, sizeof request, 0, kRequest)->Wait();
      if (request[0] < 0) return;
      const size_t i = static_cast<size_t>(request[0]);
      const float* src = i < ts.size() && request[1] >= 0 && request[1] <= 2 ? mine(i, request[1]) : nullptr;
      const int64_t first = request[2], count = request[3];
      if (src == nullptr || first < 0 || count < 0 || first > ts[i].numel - count)
        throw Error("checkpoint: rank 0 asked rank " + std::to_string(rank_) + " for a tensor it does not hold");
      m.everyone->Isend(src + first, count * sizeof(float), 0, kReply)->Wait();
    }
  }
  std::vector<int> owner(ts.size(), -1);  // group 0's local rank holding each tensor rank 0 lacks
  for (int o = 1; o < m.P; ++o)
    for (size_t i : m.own.group_experts[o]) owner[i] = o;
  const TensorFetch stored = [&](size_t i, int buffer, int64_t first, int64_t count, float* out) {
    if (const float* src = mine(i, buffer)) {
      std::copy_n(src + first, count, out);
      return;
    }
    int peer = -1;
    if (buffer != 0 && m.own.dense_moment_rank[i] >= 0) peer = m.own.dense_moment_rank[i];  // ZeRO-1's shard
    else if (owner[i] >= 0) peer = m.placement.GlobalRank(0, owner[i]);
    if (peer < 0) throw Error("checkpoint: no rank of group 0 holds " + ts[i].name);
    const int64_t request[4] = {static_cast<int64_t>(i), buffer, first, count};
    m.everyone->Isend(request, sizeof request, peer, kRequest)->Wait();
    m.everyone->Irecv(out, count * sizeof(float), peer, kReply)->Wait();
  };
  // In the experts' original order (expert_swap.cc): an expert's tensors
  // from the slot that holds it, the gate's rows reordered.
  const TensorFetch fetch = [&](size_t i, int buffer, int64_t first, int64_t count, float* out) {
    if (!m.Permuted()) return stored(i, buffer, first, count, out);
    if (const int l = m.GateLayer(i); l >= 0) {
      std::vector<float> gate(static_cast<size_t>(ts[i].numel));
      stored(i, buffer, 0, ts[i].numel, gate.data());
      m.GateToOriginalOrder(l, gate.data());
      std::copy_n(gate.data() + first, count, out);
      return;
    }
    stored(m.StoredTensor(i), buffer, first, count, out);
  };
  auto release = [&] {
    const int64_t done[4] = {-1, 0, 0, 0};
    for (int peer : servers) m.everyone->Isend(done, sizeof done, peer, kRequest)->Wait();
  };
  try {
    if (write) write(fetch);
  } catch (...) {
    release();
    throw;
  }
  release();
}

}  // namespace hetermoe::parallel
