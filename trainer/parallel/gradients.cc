// The distributed engine's gradient reduction and optimizer step
// (engine_impl.h): sums across ranks (Gloo on the host, or NCCL on the
// device), the global norm counted once per tensor, clipping, AdamW on the
// tensors this rank owns.
#include "trainer/parallel/engine_impl.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "common/error.h"

namespace hetermoe::parallel {

// The listed tensors (layout indices, held here) as spans of this rank's
// buffers, adjacent ones merged.
std::vector<model::BufferRange> DistributedBackend::Impl::Ranges(const std::vector<size_t>& tensors) const {
  std::vector<model::BufferRange> r;
  for (size_t i : tensors) r.push_back({own.local_offset[i], layout.tensors()[i].numel});
  std::sort(r.begin(), r.end(), [](const auto& a, const auto& b) { return a.offset < b.offset; });
  std::vector<model::BufferRange> merged;
  for (const auto& x : r) {
    if (!merged.empty() && merged.back().offset + merged.back().count == x.offset) merged.back().count += x.count;
    else merged.push_back(x);
  }
  return merged;
}

void DistributedBackend::Impl::PlanGradientSums() {
  auto layer_of = [&](size_t i) {
    const std::string& name = layout.tensors()[i].name;
    const std::string prefix = "model.layers.";
    if (name.rfind(prefix, 0) != 0) return -1;
    return std::atoi(name.c_str() + prefix.size());
  };
  std::vector<std::vector<size_t>> dense(L), experts(L);
  std::vector<size_t> head, embed;
  if (placement.IsAttention(rank))
    for (size_t i : own.dense_tensors) {
      const int l = layer_of(i);
      if (l >= 0 && l < L) dense[l].push_back(i);
      else if (layout.tensors()[i].offset == layout.embed) embed.push_back(i);
      else head.push_back(i);  // final norm, LM head
    }
  for (size_t i : own.owned_expert_tensors) experts[std::max(0, std::min(L - 1, layer_of(i)))].push_back(i);
  dense_by_layer.clear();
  experts_by_layer.clear();
  for (int l = 0; l < L; ++l) {
    dense_by_layer.push_back(Ranges(dense[l]));
    experts_by_layer.push_back(Ranges(experts[l]));
  }
  dense_head = Ranges(head);
  dense_embed = Ranges(embed);
}

void DistributedBackend::Impl::PostFinishedGradients(Finished what, int l, int j) {
  if (!device_step || j != R - 1) return;  // the last micro-batch's (and the last wave's)
  auto post = [](model::GradReducer* r, const std::vector<model::BufferRange>& ranges) {
    if (r && !ranges.empty()) r->Post(ranges);
  };
  switch (what) {
    case Finished::kHead: post(dense_sums.get(), dense_head); break;
    case Finished::kAttention:
      post(dense_sums.get(), dense_by_layer[l]);
      if (l == 0) post(dense_sums.get(), dense_embed);
      break;
    case Finished::kExperts: post(replica_sums.get(), experts_by_layer[l]); break;
  }
}

// A GradReducer over communicator c's members, if it has more than one.
std::unique_ptr<model::GradReducer> DistributedBackend::Impl::ReducerOver(comm::Communicator* c,
                                                                          std::chrono::milliseconds timeout) {
  if (c == nullptr || c->size() < 2) return nullptr;
  constexpr uint32_t kIdTag = (1u << 29) + 1;
  std::string id;
  if (c->rank() == 0) {
    id = device->NewExchangeId();
    for (int x = 1; x < c->size(); ++x) c->Isend(id.data(), id.size(), x, kIdTag)->Wait();
  } else {
    id.resize(device->NewExchangeIdBytes());
    c->Irecv(id.data(), id.size(), 0, kIdTag)->Wait();
  }
  return device->NewGradReducer(id, c->rank(), c->size(), timeout);
}

// Sums the listed tensors' gradients over a communicator, packed.
void DistributedBackend::Impl::AllReduceTensors(comm::Communicator* c, const std::vector<size_t>& tensors) {
  if (!c || c->size() == 1 || tensors.empty()) return;
  size_t n = 0;
  for (size_t i : tensors) n += layout.tensors()[i].numel;
  std::vector<float> packed(n);
  size_t at = 0;
  for (size_t i : tensors) {
    const auto& t = layout.tensors()[i];
    std::memcpy(packed.data() + at, Grad(i), t.numel * sizeof(float));
    at += t.numel;
  }
  c->AllReduceSum(packed.data(), n);
  at = 0;
  for (size_t i : tensors) {
    const auto& t = layout.tensors()[i];
    std::memcpy(Grad(i), packed.data() + at, t.numel * sizeof(float));
    at += t.numel;
  }
}

double DistributedBackend::ClipGradNorm(double max_norm) {
  Impl& m = *impl_;
  double sq = 0;
  const auto& ts = m.layout.tensors();
  if (m.device_step) {
    std::vector<size_t> counted;
    for (size_t i = 0; i < ts.size(); ++i)
      if (m.own.counted[i]) counted.push_back(i);
    sq = m.device->GradSquares(m.Ranges(counted));
  } else {
    for (size_t i = 0; i < ts.size(); ++i) {
      if (!m.own.counted[i]) continue;
      const float* g = m.Grad(i);
      for (int64_t x = 0; x < ts[i].numel; ++x) sq += static_cast<double>(g[x]) * g[x];
    }
  }
  m.everyone->AllReduceSum(&sq, 1);
  const double norm = std::sqrt(sq);
  if (max_norm > 0.0) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0 && m.device_step) {
      m.device->ScaleGrads(static_cast<float>(coef));
    } else if (coef < 1.0) {
      const float c = static_cast<float>(coef);
      for (size_t i = 0; i < ts.size(); ++i) {
        if (!m.own.owned[i]) continue;
        float* g = m.Grad(i);
        for (int64_t x = 0; x < ts[i].numel; ++x) g[x] *= c;
      }
    }
  }
  return norm;
}

// Each attention rank contributes the dense tensors of its shard (just
// updated) and zeros elsewhere; the sum is every shard's update, exactly.
void DistributedBackend::Impl::GatherDenseShards() {
  if (!own.zero || !dense || dense->size() < 2 || !placement.IsAttention(rank)) return;
  const auto& ts = layout.tensors();
  if (device_step) {  // the same on the device, over the dense NCCL communicator
    std::vector<model::BufferRange> ranges;
    std::vector<bool> mine;
    for (size_t i : own.dense_tensors) {
      ranges.push_back({own.local_offset[i], ts[i].numel});
      mine.push_back(own.moments[i]);
    }
    device->SumParameterShards(dense_sums.get(), ranges, mine);
    return;
  }
  size_t n = 0;
  for (size_t i : own.dense_tensors) n += ts[i].numel;
  std::vector<float> packed(n, 0.0f);
  size_t at = 0;
  for (size_t i : own.dense_tensors) {
    if (own.moments[i]) std::memcpy(packed.data() + at, Param(i), ts[i].numel * sizeof(float));
    at += ts[i].numel;
  }
  dense->AllReduceSum(packed.data(), n);
  at = 0;
  for (size_t i : own.dense_tensors) {
    std::memcpy(Param(i), packed.data() + at, ts[i].numel * sizeof(float));
    at += ts[i].numel;
  }
}

void DistributedBackend::OptimizerStep(double lr) {
  Impl& m = *impl_;
  if (!m.apply_step) return;  // an overflow: parameters, moments and the AdamW step stay
  if (m.device_step) {
    m.device->AdamWStep(lr);  // the local tensors whose moments are here
    m.adamw->set_step(m.adamw->step() + 1);
    m.GatherDenseShards();
  } else {
    m.adamw->Step(m.params.data(), m.grads.data(), lr);  // the tensors whose moments are here
    m.GatherDenseShards();
    std::vector<size_t> updated(m.own.local.tensors().size());
    for (size_t i = 0; i < updated.size(); ++i) updated[i] = i;
    m.device->SetParams(m.params.data(), updated);
  }
  if (m.swap_every > 0 && ++m.optimizer_calls % m.swap_every == 0) m.SwapExperts();
}

}  // namespace hetermoe::parallel
