// The distributed engine (engine.h): construction, the communicators, and
// one training step (the rank's tasks in order, then the gradient sums and
// the step's statistics). The parts, in engine_impl.h's Impl:
//   attention_tasks.cc   attention ranks' tasks: dispatch, combine, backward
//   owner_tasks.cc       expert owners' tasks: headers, expert compute, replies
//   device_transport.cc  the NCCL transport: rows device to device (RowExchange)
//   gradients.cc         gradient sums across ranks, norm, clipping, AdamW
//   checkpoint_io.cc     state in and out: upload, download, streamed checkpoints
//   node_relay.cc        node-level dedup: one block per node, relayed inside it
//   expert_swap.cc       HierMoE's expert swap
// Notation: L layers, E experts, P ranks per group (local indices), M
// attention ranks per group, R micro-batches per attention rank, d hidden,
// f expert width, k experts per token. Message tags encode (kind, layer,
// micro-batch); the pair (peer, tag) is unique within a step.
#include "trainer/parallel/engine.h"

#include "trainer/parallel/engine_impl.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>

#include "common/error.h"
#include "trainer/model/cpu_stages.h"

namespace hetermoe::parallel {

DistributedBackend::Impl::Impl(const io::MixtralConfig& c, const model::ParameterLayout& lay, const Placement& p,
                               comm::World* w, const optim::AdamWOptions& opt, Emulation em, Tracer* t,
                               const StageDeviceFactory& make_device, bool zero)
    : config(c),
      layout(lay),
      placement(p),
      world(w),
      rank(w->rank()),
      emulation(em),
      tracer(t),
      own(lay, p, w->rank(), zero) {
  L = p.layers;
  P = p.group_size;
  M = p.attention_per_group;
  R = p.micro_per_rank;
  group = p.GroupOf(rank);
  E = c.num_local_experts;
  d = c.hidden_size;
  f = c.intermediate_size;
  k = c.num_experts_per_tok;
  order = TaskOrder(p, rank);
  for (int x = 0; x < P; ++x) node_of.push_back(x);  // each rank its own node, until SetDedup
  relay_group_of = node_of;
  for (int l = 0; l < L; ++l) {
    expert_of_slot.emplace_back(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) expert_of_slot[l][e] = static_cast<int32_t>(e);
  }
  params.assign(own.local.total(), 0.0f);
  grads.assign(own.local.total(), 0.0f);
  std::vector<bool> local_moments(own.local.tensors().size(), false);
  for (size_t i = 0; i < own.owned.size(); ++i)
    if (own.owned[i]) local_moments[own.local_index[i]] = own.moments[i];
  adamw.emplace(own.local, opt, local_moments);
  device = make_device ? make_device(own.local, params.data(), grads.data())
                       : model::MakeCpuStageDevice(config, own.local, params.data(), grads.data());
  Connect();
  if (p.IsAttention(rank))
    for (int j = 0; j < R; ++j) micro.push_back(device->NewMicroBatch());
  std::vector<double> bytes(static_cast<size_t>(world->size()), 0.0);
  bytes[rank] = sizeof(float) * (2.0 * static_cast<double>(own.local.total()) +
                                 2.0 * static_cast<double>(adamw->exp_avg().size()));
  everyone->AllReduceSum(bytes.data(), bytes.size());
  for (double b : bytes) rank_state_bytes.push_back(static_cast<int64_t>(b));
  outbox.resize(static_cast<size_t>(L) * R * P);
  outputs_in.resize(outbox.size());
  input_grads_in.resize(outbox.size());
  dedups.resize(outbox.size());
  grad_sums.resize(outbox.size());
  slots.resize(static_cast<size_t>(L) * R * P);
  W = R;
  micro_sends.resize(W);
  blocks.resize(static_cast<size_t>(L) * W * P);
  block_sends.resize(blocks.size());
}

void DistributedBackend::Impl::Connect() {
  std::vector<int> members;
  for (int x = 0; x < P; ++x) members.push_back(placement.GlobalRank(group, x));
  const std::string g = std::to_string(group);
  dispatch = world->Group("dispatch-" + g, members);
  combine = world->Group("combine-" + g, members);
  if (placement.IsAttention(rank)) {
    std::vector<int> attention;
    for (int gg = 0; gg < placement.groups; ++gg)
      for (int x = 0; x < M; ++x) attention.push_back(placement.GlobalRank(gg, x));
    dense = world->Group("dense", attention);
  }
  std::vector<int> same_local;
  for (int gg = 0; gg < placement.groups; ++gg)
    same_local.push_back(placement.GlobalRank(gg, placement.LocalOf(rank)));
  replicas = world->Group("replicas-" + std::to_string(placement.LocalOf(rank)), same_local);
  std::vector<int> all;
  for (int r = 0; r < placement.world_size(); ++r) all.push_back(r);
  everyone = world->Group("world", all);
}

DistributedBackend::DistributedBackend(const io::MixtralConfig& config,
                                       const model::ParameterLayout& layout,
                                       const Placement& placement, comm::World* world,
                                       const optim::AdamWOptions& adamw, Emulation emulation,
                                       Tracer* tracer, const StageDeviceFactory& make_device, bool zero)
    : impl_(std::make_unique<Impl>(config, layout, placement, world, adamw, emulation, tracer, make_device, zero)),
      rank_(world->rank()) {}

DistributedBackend::~DistributedBackend() {
  // Unwinding from an error (a dead peer): Gloo's transport thread may still
  // write into the receive buffers posted up front, and its pending requests
  // refer to pairs in error, so freeing them here corrupted the heap (seen as
  // SIGSEGV / SIGABRT instead of the retryable exit). The process is on its
  // way out with that error: leave the engine's memory to it.
  if (std::uncaught_exceptions() > 0) (void)impl_.release();
}

const std::vector<int64_t>& DistributedBackend::RankStateBytes() const { return impl_->rank_state_bytes; }

const std::vector<bool>& DistributedBackend::OwnedTensors() const { return impl_->own.owned; }

double DistributedBackend::LossScale() const { return impl_->last_loss_scale; }

int64_t DistributedBackend::SkippedSteps() const { return impl_->skipped_steps; }

backend::StepLoss DistributedBackend::ComputeGradients(const backend::StepInput& step) {
  Impl& m = *impl_;
  if (step.micro_batches != m.placement.micro_batches)
    throw Error("distributed step: micro_batches changed from the placement's");
  const auto start = Clock::now();
  m.device->ZeroGrads();
  m.micro_tokens = step.global_batch / step.micro_batches * step.seq_len;
  m.loss_sum = m.ce_sum = m.aux_sum = 0;
  m.expert_tokens.assign(m.L, std::vector<int64_t>(m.E, 0));
  m.idle = m.dispatch_wait = m.combine_wait = 0;
  m.bytes_sent = 0;
  m.rows_sent.assign(m.L, 0);
  m.rows_inter_node.assign(m.L, 0);
  m.rows_relayed.assign(m.L, 0);
  m.blocks_routed.assign(m.L, 0);
  m.blocks_node.assign(m.L, 0);
  m.rows_to_rank.assign(static_cast<size_t>(m.L) * m.placement.world_size(), 0);
  // The routing is recorded only for a step whose optimizer step swaps.
  const bool swap_due = m.swap_every > 0 && (m.optimizer_calls + 1) % m.swap_every == 0;
  m.routed.assign(swap_due ? m.L : 0, std::vector<std::vector<int64_t>>(m.E));
  const float loss_scale = 1.0f / static_cast<float>(step.micro_batches);

  m.posted.assign(static_cast<size_t>(model::RowExchange::kChannels) * m.L * m.R, -1);
  m.PostOwnerReceives();
  for (const Task& t : m.order) {
    if (t.kind == Task::Kind::kExpFwd || t.kind == Task::Kind::kExpBwd) m.RunOwner(t);
    else m.RunAttention(t, step, loss_scale);
  }
  for (auto& s : m.sends) s->Wait();
  m.sends.clear();
  for (auto* lists : {&m.micro_sends, &m.block_sends})
    for (auto& list : *lists) {
      for (auto& s : list) s->Wait();
      list.clear();
    }
  if (m.exchange) m.exchange->WaitAll();
  if (!m.device_step) m.device->GetGrads(m.grads.data());
  // Device step: the sums started as layers finished (PostFinishedGradients)
  // must be in before anything reads the gradients.
  if (m.device_step) {
    const auto w0 = Clock::now();
    if (m.dense_sums && m.placement.IsAttention(rank_)) m.dense_sums->Wait();
    if (m.replica_sums) m.replica_sums->Wait();
    if (m.tracer) m.tracer->Add("gradient sums", Tracer::kCombine, w0, Clock::now());
  }
  const double wall = Seconds(start, Clock::now());
  // fp16: an overflow anywhere is every rank's (one sum with the losses
  // below). Without loss scaling the verdict is not used: no scan.
  double nonfinite = 0;
  if (m.device->ScalesLoss() && m.device_step) {
    nonfinite = std::isfinite(m.device->GradSquares(m.AllLocal())) ? 0 : 1;
  } else if (m.device->ScalesLoss()) {
    for (float g : m.grads)
      if (!std::isfinite(g)) {
        nonfinite = 1;
        break;
      }
  }

  // Gradients: dense over every attention rank, experts over the groups.
  std::vector<size_t> owned_dense;
  if (m.placement.IsAttention(rank_)) owned_dense = m.own.dense_tensors;
  if (!m.device_step) {
    m.AllReduceTensors(m.dense.get(), owned_dense);
    m.AllReduceTensors(m.replicas.get(), m.own.owned_expert_tensors);
  }

  // Losses, routing counts and idle time, summed over the world.
  const bool attention = m.placement.IsAttention(rank_);
  std::vector<double> sums = {m.loss_sum, m.ce_sum, m.aux_sum,
                              attention ? m.idle : 0.0, attention ? wall : 0.0,
                              attention ? 0.0 : m.idle, attention ? 0.0 : wall,
                              m.dispatch_wait, m.combine_wait, m.bytes_sent, nonfinite};
  for (const auto& layer : m.expert_tokens)
    for (int64_t c : layer) sums.push_back(static_cast<double>(c));
  const size_t dispatch_at = sums.size();
  sums.insert(sums.end(), m.rows_sent.begin(), m.rows_sent.end());
  sums.insert(sums.end(), m.rows_to_rank.begin(), m.rows_to_rank.end());
  const size_t levels_at = sums.size();
  sums.insert(sums.end(), m.rows_inter_node.begin(), m.rows_inter_node.end());
  sums.insert(sums.end(), m.rows_relayed.begin(), m.rows_relayed.end());
  const size_t blocks_at = sums.size();
  sums.insert(sums.end(), m.blocks_routed.begin(), m.blocks_routed.end());
  sums.insert(sums.end(), m.blocks_node.begin(), m.blocks_node.end());
  m.everyone->AllReduceSum(sums.data(), sums.size());

  backend::StepLoss out;
  out.loss = sums[0] / step.micro_batches;
  out.ce = sums[1] / step.micro_batches;
  out.aux = sums[2] / step.micro_batches;
  out.has_parallel_stats = true;
  out.bubble_attention = sums[4] > 0 ? sums[3] / sums[4] : 0;
  out.bubble_expert = sums[6] > 0 ? sums[5] / sums[6] : 0;
  out.dispatch_wait_seconds = sums[7];
  out.combine_wait_seconds = sums[8];
  out.exchange_bytes = sums[9];
  out.rank_state_bytes = m.rank_state_bytes;
  out.expert_tokens.assign(m.L, std::vector<int64_t>(m.E));
  for (int l = 0; l < m.L; ++l)
    for (int64_t e = 0; e < m.E; ++e)
      out.expert_tokens[l][m.expert_of_slot[l][e]] = static_cast<int64_t>(sums[11 + l * m.E + e]);
  const int world = m.placement.world_size();
  out.dispatch_rows_sent.assign(sums.begin() + dispatch_at, sums.begin() + dispatch_at + m.L);
  out.dispatch_rows_inter_node.assign(sums.begin() + levels_at, sums.begin() + levels_at + m.L);
  out.dispatch_rows_relayed.assign(sums.begin() + levels_at + m.L, sums.begin() + levels_at + 2 * m.L);
  // The depth each layer ran: 1 + the share of the blocks that could take
  // a route and did (kNode, kSwitch: all; kAuto: as their attention ranks
  // chose); rank level where no block could.
  out.dedup_depth.assign(m.L, m.dedup ? 1.0 : 0.0);
  for (int l = 0; l < m.L; ++l) {
    const double routed = sums[blocks_at + l], node = sums[blocks_at + m.L + l];
    if (routed > 0) out.dedup_depth[l] = 1.0 + node / routed;
  }
  out.dedup_relay_level = m.depth == DedupDepth::kSwitch ? "switch" : "node";
  if (m.tracer && m.placement.IsAttention(rank_)) {  // the depth each layer ran this step, in the trace
    std::string depths = "dedup depth by layer:";
    char share[32];
    for (double x : out.dedup_depth) {
      std::snprintf(share, sizeof share, " node %.0f%%", (x - 1.0) * 100.0);
      depths += x >= 2.0 ? " " + out.dedup_relay_level : x == 1.0 ? " rank" : x == 0.0 ? " off" : share;
    }
    const auto now = Clock::now();
    m.tracer->Add(depths, Tracer::kDispatch, now, now);
  }
  out.expert_load_imbalance.assign(m.L, 0);
  for (int l = 0; l < m.L; ++l) {
    const double* to_rank = sums.data() + dispatch_at + m.L + static_cast<size_t>(l) * world;
    std::vector<double> loads;
    for (int r = 0; r < world; ++r)
      if (m.placement.OwnsExperts(r, l)) loads.push_back(to_rank[r]);
    out.expert_load_imbalance[l] = LoadImbalance(loads);
  }
  // Loss scaling: every rank gets the same verdict, so the scales stay equal.
  const double scale = m.device->LossScale();
  m.last_loss_scale = scale;
  m.apply_step = m.device->UpdateLossScale(sums[10] > 0);
  if (!m.apply_step) ++m.skipped_steps;
  if (m.apply_step && scale != 1.0) {
    const float unscale = static_cast<float>(1.0 / scale);
    if (m.device_step) m.device->ScaleGrads(unscale);
    else
      for (float& g : m.grads) g *= unscale;
  }
  return out;
}

void DistributedBackend::SetRecompute(const std::string& what) {
  if (what != "none" && what != "attention" && what != "experts" && what != "full")
    throw Error("train.recompute: '" + what + "' is not none, attention, experts or full");
  Impl& m = *impl_;
  m.device->SetRecomputeExperts(what == "experts" || what == "full");
  m.device->SetRecomputeAttention(what == "attention" || what == "full");
  for (auto& b : m.blocks) b.reset();  // blocks are made again, with the setting
  for (auto& mb : m.micro) {           // and so are the micro-batches
    mb = m.device->NewMicroBatch();
    if (m.exchange) mb->SetHostRows(false);
  }
}

int DistributedBackend::SetInFlight(int micro_batches) {
  Impl& m = *impl_;
  if (micro_batches < 0) throw Error("parallel.micro_batches_in_flight: must be >= 0 (0 = all)");
  m.W = micro_batches > 0 ? std::min(micro_batches, m.R) : m.R;
  m.order = TaskOrder(m.placement, rank_, m.W == m.R ? 0 : m.W);
  if (static_cast<int>(m.micro.size()) > m.W) m.micro.resize(m.W);  // micro-batch j uses object j % W
  m.micro_sends.clear();
  m.micro_sends.resize(m.W);
  m.blocks.clear();
  m.blocks.resize(static_cast<size_t>(m.L) * m.W * m.P);
  m.block_sends.clear();
  m.block_sends.resize(m.blocks.size());
  return m.W;
}

std::string DistributedBackend::name() const { return "distributed on " + impl_->device->name(); }
std::string DistributedBackend::precision() const { return impl_->device->precision(); }
std::vector<bool> DistributedBackend::SequencesUsed(int64_t global_batch, int64_t micro_batches) const {
  return impl_->placement.SequencesOf(impl_->rank, global_batch, micro_batches);
}

}  // namespace hetermoe::parallel
