// The distributed engine's expert swap (HierMoE, parallel.swap_every;
// engine.h's SetSwapEvery): the decision from the last step's routing,
// summed over every rank, and the swap itself, as a relabelling: slot a
// takes expert b's weights and AdamW moments (from b's owner) and b's slot
// takes a's, and the gate's rows a and b swap on the ranks that hold the
// gate. A permutation of a layer's experts and of the gate's rows together
// leaves the layer's function unchanged, so training goes on as it would
// have; the placement stays contiguous (each owner keeps its range of
// slots), only what sits in the slots moves. expert_of_slot remembers which
// expert each slot holds, so that routing counts and checkpoints keep the
// experts' original indices (checkpoint_io.cc), and so that the aux loss,
// which Mixtral sums per expert index over all layers, still pairs each
// expert's counts across layers (the stage device's ExpertOrder).
#include <algorithm>
#include <cstdio>
#include <cstring>

#include "common/error.h"
#include "planner/expert_swap.h"
#include "trainer/parallel/engine_impl.h"

namespace hetermoe::parallel {

void DistributedBackend::SetSwapEvery(int steps) {
  if (steps < 0) throw Error("parallel.swap_every must be >= 0");
  impl_->swap_every = steps;
}

int64_t DistributedBackend::SwapsMade() const { return impl_->swaps_made; }

bool DistributedBackend::Impl::Permuted() const {
  for (int l = 0; l < L; ++l)
    for (int64_t s = 0; s < E; ++s)
      if (expert_of_slot[l][s] != s) return true;
  return false;
}

std::vector<std::vector<int>> DistributedBackend::ExpertPlacement() const {
  const Impl& m = *impl_;
  if (!m.Permuted()) return {};
  std::vector<std::vector<int>> out;
  for (const auto& layer : m.expert_of_slot) out.emplace_back(layer.begin(), layer.end());
  return out;
}

void DistributedBackend::SetExpertPlacement(const std::vector<std::vector<int>>& target, int64_t swaps_made) {
  Impl& m = *impl_;
  m.swaps_made = swaps_made;
  if (target.empty()) return;
  if (static_cast<int>(target.size()) != m.L) throw Error("expert placement: one list per layer expected");
  m.PullState();
  for (int l = 0; l < m.L; ++l) {
    if (static_cast<int64_t>(target[l].size()) != m.E) throw Error("expert placement: one expert per slot expected");
    // Selection: slot s takes target[l][s] from wherever it is now (every rank
    // runs the same transpositions in the same order).
    for (int64_t s = 0; s < m.E; ++s) {
      if (m.expert_of_slot[l][s] == target[l][s]) continue;
      int64_t t = s + 1;
      while (t < m.E && m.expert_of_slot[l][t] != target[l][s]) ++t;
      if (t == m.E) throw Error("expert placement: layer " + std::to_string(l) + " is not a permutation");
      m.Relabel(l, s, t);
      std::swap(m.expert_of_slot[l][s], m.expert_of_slot[l][t]);
    }
  }
  m.PushState(m.adamw->step());
  m.device->SetExpertOrder(m.expert_of_slot);
}

// Which tokens (j * tokens + token, unique on this rank) chose each slot.
void DistributedBackend::Impl::RecordRouting(int l, int j, const ops::DispatchPlan& plan) {
  for (int64_t e = 0; e < E; ++e)
    for (int64_t row = plan.offsets[e]; row < plan.offsets[e + 1]; ++row)
      routed[l][e].push_back(static_cast<int64_t>(j) * plan.tokens + plan.token_of_row[row]);
}

size_t DistributedBackend::Impl::TensorIndex(const std::string& name) const {
  const model::TensorSlot* slot = layout.Find(name);
  if (slot == nullptr) throw Error("expert swap: no tensor " + name);
  return static_cast<size_t>(slot - layout.tensors().data());
}

namespace {
std::string ExpertTensor(int l, int64_t e, const char* kind) {
  return "model.layers." + std::to_string(l) + ".block_sparse_moe.experts." + std::to_string(e) + "." + kind +
         ".weight";
}
std::string GateTensor(int l) { return "model.layers." + std::to_string(l) + ".block_sparse_moe.gate.weight"; }
constexpr const char* kExpertKinds[] = {"w1", "w2", "w3"};
}  // namespace

int DistributedBackend::Impl::GateLayer(size_t i) const {
  for (int l = 0; l < L; ++l)
    if (layout.tensors()[i].name == GateTensor(l)) return l;
  return -1;
}

size_t DistributedBackend::Impl::StoredTensor(size_t i) const {
  const std::string& name = layout.tensors()[i].name;
  for (int l = 0; l < L; ++l)
    for (int64_t s = 0; s < E; ++s) {
      if (expert_of_slot[l][s] == s) continue;
      for (const char* kind : kExpertKinds)
        if (name == ExpertTensor(l, expert_of_slot[l][s], kind)) return TensorIndex(ExpertTensor(l, s, kind));
    }
  return i;
}

void DistributedBackend::Impl::GateToOriginalOrder(int l, float* gate) const {
  const std::vector<float> slots(gate, gate + E * d);
  for (int64_t s = 0; s < E; ++s) std::copy_n(slots.data() + s * d, d, gate + expert_of_slot[l][s] * d);
}

void DistributedBackend::Impl::ToOriginalOrder(backend::HostState* state) const {
  if (!Permuted()) return;
  const auto& ts = layout.tensors();
  for (std::vector<float>* buffer : {&state->params, &state->exp_avg, &state->exp_avg_sq}) {
    const std::vector<float> slots = *buffer;
    for (size_t i = 0; i < ts.size(); ++i) {
      if (const int l = GateLayer(i); l >= 0) {
        GateToOriginalOrder(l, buffer->data() + ts[i].offset);
        continue;
      }
      const size_t from = StoredTensor(i);
      if (from != i) std::copy_n(slots.data() + ts[from].offset, ts[i].numel, buffer->data() + ts[i].offset);
    }
  }
}

void DistributedBackend::Impl::Relabel(int l, int64_t a, int64_t b) {
  Move move = StartRelabel(l, a, b);
  FinishRelabel(&move);
}

// The gate's rows swap here; the experts' tensors (parameters and moments
// of w1, w2, w3) go to the other owner in one message, and the other's come
// back: posted now, put in place by FinishRelabel.
DistributedBackend::Impl::Move DistributedBackend::Impl::StartRelabel(int l, int64_t a, int64_t b) {
  const auto& ts = layout.tensors();
  // The gate's rows a and b, in the parameters and (where they are) the moments.
  const size_t gate = TensorIndex(GateTensor(l));
  if (own.owned[gate]) {
    std::vector<float*> buffers = {Param(gate)};
    if (own.moments[gate]) buffers.insert(buffers.end(), {Moment(1, gate), Moment(2, gate)});
    for (float* w : buffers) std::swap_ranges(w + a * d, w + (a + 1) * d, w + b * d);
  }
  auto owner_of = [&](int64_t e) {
    for (int o = 0; o < P; ++o) {
      const ExpertRange& r = placement.owners[l][o];
      if (e >= r.first && e < r.first + r.count) return o;
    }
    throw Error("expert swap: no rank holds expert " + std::to_string(e) + " of layer " + std::to_string(l));
  };
  Move move;
  const int me = placement.LocalOf(rank), oa = owner_of(a), ob = owner_of(b);
  if (me != oa && me != ob) return move;
  if (oa == ob) {  // both slots here (a placement restored on resume): swap them in place
    for (const char* kind : kExpertKinds) {
      const size_t ta = TensorIndex(ExpertTensor(l, a, kind)), tb = TensorIndex(ExpertTensor(l, b, kind));
      for (int x = 0; x < 3; ++x) {
        float* pa = x == 0 ? Param(ta) : Moment(x, ta);
        std::swap_ranges(pa, pa + ts[ta].numel, x == 0 ? Param(tb) : Moment(x, tb));
      }
    }
    return move;
  }
  const int64_t mine = me == oa ? a : b;
  const int peer = placement.GlobalRank(group, me == oa ? ob : oa);
  for (const char* kind : kExpertKinds) {
    const size_t t = TensorIndex(ExpertTensor(l, mine, kind));
    for (int x = 0; x < 3; ++x) move.buffers.push_back({x == 0 ? Param(t) : Moment(x, t), ts[t].numel});
  }
  for (const auto& [data, n] : move.buffers) move.out.insert(move.out.end(), data, data + n);
  move.in.resize(move.out.size());
  const uint32_t tag = (1u << 29) + static_cast<uint32_t>(l);
  move.send = everyone->Isend(move.out.data(), move.out.size() * sizeof(float), peer, tag);
  move.recv = everyone->Irecv(move.in.data(), move.in.size() * sizeof(float), peer, tag);
  return move;
}

void DistributedBackend::Impl::FinishRelabel(Move* move) {
  if (!move->send) return;
  move->send->Wait();
  move->recv->Wait();
  size_t at = 0;
  for (const auto& [data, n] : move->buffers) {
    std::copy_n(move->in.data() + at, n, data);
    at += static_cast<size_t>(n);
  }
  *move = Move{};
}

void DistributedBackend::Impl::SwapExperts() {
  if (static_cast<int>(routed.size()) != L) throw Error("expert swap: no routing recorded for this step");
  const auto start = Clock::now();
  // Every layer's table, summed over the world in one go: every part of a
  // table sums over the ranks' tokens, so every rank then makes the same
  // choice. Owners by local index within the group; every group holds the
  // same slots, so every attention rank of every group adds its tokens.
  std::vector<std::vector<int>> owner(L, std::vector<int>(static_cast<size_t>(E)));
  std::vector<planner::SwapTable> tables;
  std::vector<double> sums;
  for (int l = 0; l < L; ++l) {
    for (int o = 0; o < P; ++o) {
      const ExpertRange& r = placement.owners[l][o];
      for (int64_t e = r.first; e < r.first + r.count; ++e) owner[l][e] = o;
    }
    tables.push_back(planner::MakeSwapTable(routed[l], owner[l], P));
    const planner::SwapTable& t = tables.back();
    sums.insert(sums.end(), t.rows.begin(), t.rows.end());
    sums.insert(sums.end(), t.routed.begin(), t.routed.end());
    sums.insert(sums.end(), t.delta.begin(), t.delta.end());
  }
  everyone->AllReduceSum(sums.data(), sums.size());
  std::vector<planner::SwapChoice> choices;
  std::vector<double> chosen;
  size_t at = 0;
  for (int l = 0; l < L; ++l) {
    planner::SwapTable& t = tables[l];
    for (std::vector<double>* part : {&t.rows, &t.routed, &t.delta}) {
      std::copy_n(sums.begin() + static_cast<std::ptrdiff_t>(at), part->size(), part->begin());
      at += part->size();
    }
    choices.push_back(planner::ChooseSwap(t, owner[l]));
    chosen.insert(chosen.end(), {static_cast<double>(choices.back().a), static_cast<double>(choices.back().b)});
  }
  // The same sums give the same choices; a rank that chose otherwise would
  // wait forever for its partner's experts, so check before moving any.
  std::vector<double> check = chosen;
  everyone->AllReduceSum(check.data(), check.size());
  const double world_size = placement.world_size();
  for (int l = 0; l < L; ++l)
    if (check[2 * l] != world_size * chosen[2 * l] || check[2 * l + 1] != world_size * chosen[2 * l + 1])
      throw Error("expert swap: layer " + std::to_string(l) + ": the ranks chose different experts to swap");
  bool swapped = false;
  std::vector<Move> moves;
  for (int l = 0; l < L; ++l) {
    const planner::SwapChoice& choice = choices[l];
    if (choice.a < 0) continue;
    if (!swapped) PullState();  // the device optimizer's state to the host buffers, once, if anything moves
    swapped = true;
    moves.push_back(StartRelabel(l, choice.a, choice.b));  // every layer's moves in flight at once
  }
  for (Move& move : moves) FinishRelabel(&move);
  for (int l = 0; l < L; ++l) {
    const planner::SwapChoice& choice = choices[l];
    if (choice.a < 0) continue;
    std::swap(expert_of_slot[l][choice.a], expert_of_slot[l][choice.b]);
    ++swaps_made;
    if (rank == 0)
      std::fprintf(stderr,
                   "expert swap: layer %d, experts %d and %d trade ranks %d and %d (busiest rank's load %lld -> %lld "
                   "rows received + computed in the last step)\n",
                   l, expert_of_slot[l][choice.b], expert_of_slot[l][choice.a], owner[l][choice.a], owner[l][choice.b],
                   static_cast<long long>(*std::max_element(choice.rows_before.begin(), choice.rows_before.end())),
                   static_cast<long long>(*std::max_element(choice.rows_after.begin(), choice.rows_after.end())));
  }
  if (swapped) {
    PushState(adamw->step());
    device->SetExpertOrder(expert_of_slot);  // the aux loss keeps summing per original expert
  }
  const auto end = Clock::now();
  if (tracer) tracer->Add("expert swap", Tracer::kCombine, start, end);
  if (rank == 0)
    std::fprintf(stderr, "expert swap: decided%s in %.2f ms\n", swapped ? " and moved" : " (none lowers the load)",
                 1e3 * Seconds(start, end));
}

}  // namespace hetermoe::parallel
