// The distributed engine's attention-rank tasks (engine_impl.h): each
// micro-batch's attention stages, the dispatch of its rows to the expert
// owners and the wait for their outputs and input grads, over Gloo through
// the host or, with the NCCL transport, through device_transport.cc.
#include "trainer/parallel/engine_impl.h"

#include "common/error.h"

namespace hetermoe::parallel {

// Dedup: each token's summed input grad goes to its first row, zeros to
// the others, so that AttentionBackward's scatter-add over rows yields the
// same per-token sum.
void DistributedBackend::Impl::FanOutGradSums(int l, int j) {
  model::MicroBatchStages& mb = Micro(j);
  const int me = placement.LocalOf(rank);
  ForEachOwner(l, j, [&](int o, const ExpertRange&, int64_t row0, int64_t rows) {
    if (rows == 0 || RouteOf(l, j, me, o)) return;
    wire::ScatterSums(dedups[Idx(l, j, o)], grad_sums[Idx(l, j, o)].data(), d,
                      mb.dispatched_grads(l).data() + row0 * d);
  });
}

// The header (and, over Gloo, the rows) of micro-batch j's layer-l block
// for each owner; with the NCCL transport the rows go in one exchange
// group with this rank's own receives of that block as an owner.
void DistributedBackend::Impl::PostDispatch(int l, int j) {
  model::MicroBatchStages& mb = Micro(j);
  const ops::DispatchPlan& plan = mb.plan(l);
  if (!routed.empty()) RecordRouting(l, j, plan);
  std::vector<model::RowExchange::Send> sends;
  const int me = placement.LocalOf(rank);
  if (ReachesRoute(l, me)) {  // this block could go through a relay: its depth, counted for the metrics
    if (depth == DedupDepth::kAuto) via_node[Idx(l, j, me)] = ChooseNodeLevel(l, j) ? 1 : 0;
    blocks_routed[l] += 1;
    blocks_node[l] += via_node[Idx(l, j, me)];
  }
  // kAuto: a route owner's message starts with a word saying what follows,
  // packed in front of the block.
  auto word_bytes = [&](int o) {
    return depth == DedupDepth::kAuto && RouteFor(l, me, o) ? wire::kRouteWordBytes : size_t{0};
  };
  ForEachOwner(l, j, [&](int o, const ExpertRange& r, int64_t row0, int64_t rows) {
    const size_t to_rank = static_cast<size_t>(l) * placement.world_size() + placement.GlobalRank(group, o);
    if (const NodeRoute* route = RouteOf(l, j, me, o)) {
      // Its rows go in the node's block (SendNodeBlocks); the outputs come directly.
      rows_to_rank[to_rank] += static_cast<double>(rows);
      if (depth == DedupDepth::kAuto && o != route->owners[0]) {  // the word alone: the first owner relays
        std::vector<char>& box = outbox[Idx(l, j, o)];
        box.clear();
        wire::WriteRouteWord(wire::RouteBlock::kRelayed, &box);
        Send(dispatch.get(), box.data(), box.size(), o, Tag(kRows, l, j));
      }
      if (rows > 0 && !exchange)
        outputs_in[Idx(l, j, o)] = combine->Irecv(mb.expert_outputs(l).data() + row0 * d,
                                                  rows * d * sizeof(float), o, Tag(kOutputs, l, j));
      return;
    }
    std::vector<char>& box = outbox[Idx(l, j, o)];
    Dedup* dd = nullptr;
    if (dedup) {
      dd = &dedups[Idx(l, j, o)];
      if (!word_bytes(o)) {  // a route owner's with kAuto: made when the depth was chosen (ChooseNodeLevel)
        unique_of.resize(plan.tokens, -1);
        wire::MakeDedup(plan.token_of_row, row0, rows, unique_of, dd);
      }
    }
    rows_sent[l] += static_cast<double>(dd ? dd->uniques() : rows);
    if (node_of[o] != node_of[me]) rows_inter_node[l] += static_cast<double>(dd ? dd->uniques() : rows);
    rows_to_rank[to_rank] += static_cast<double>(rows);
    if (exchange) {
      wire::PackDispatch(plan.counts.data() + r.first, r.count, nullptr, rows, 0, dd, &box, word_bytes(o));
      if (word_bytes(o)) wire::WriteRouteWord(wire::RouteBlock::kOwn, &box);
      Send(dispatch.get(), box.data(), box.size(), o, Tag(kRows, l, j));
      if (rows == 0) return;
      model::RowExchange::Send s;
      s.peer = o;
      s.rows = mb.device_rows(l).xp + row0 * d;
      s.count = dd ? dd->uniques() : rows;
      if (dd) s.pick.assign(dd->first.begin(), dd->first.end());
      sends.push_back(std::move(s));
      return;
    }
    wire::PackDispatch(plan.counts.data() + r.first, r.count, mb.dispatched(l).data() + row0 * d, rows, d, dd, &box,
                       word_bytes(o));
    if (word_bytes(o)) wire::WriteRouteWord(wire::RouteBlock::kOwn, &box);
    Send(dispatch.get(), box.data(), box.size(), o, Tag(kRows, l, j));
    if (rows > 0)
      outputs_in[Idx(l, j, o)] = combine->Irecv(mb.expert_outputs(l).data() + row0 * d,
                                                rows * d * sizeof(float), o, Tag(kOutputs, l, j));
  });
  SendNodeBlocks(l, j, exchange ? &sends : nullptr);
  if (!exchange) return;
  PostGroup(Channel::kRows, l, j, std::move(sends), OwnsLayer(l) ? OwnerRowRecvs(l, j) : Recvs{});
  if (!OwnsLayer(l)) PostGroup(Channel::kOutputs, l, j, {}, AttentionOutputRecvs(l, j));
}

void DistributedBackend::Impl::FinishCombine(int l, int j) {
  if (exchange) WaitGroup(Channel::kOutputs, l, j, "combine");
  else WaitFromOwners(outputs_in, l, j, "combine");
}

void DistributedBackend::Impl::PostBackwardDispatch(int l, int j) {
  model::MicroBatchStages& mb = Micro(j);
  if (exchange) {
    std::vector<model::RowExchange::Send> sends;
    ForEachOwner(l, j, [&](int o, const ExpertRange&, int64_t row0, int64_t rows) {
      if (rows == 0) return;
      model::RowExchange::Send s;
      s.peer = o;
      s.rows = mb.device_rows(l).dy + row0 * d;
      s.count = rows;
      sends.push_back(std::move(s));
    });
    PostGroup(Channel::kOutputGrads, l, j, std::move(sends), OwnsLayer(l) ? OwnerOutputGradRecvs(l, j) : Recvs{});
    if (!OwnsLayer(l)) PostGroup(Channel::kInputGrads, l, j, {}, AttentionInputGradRecvs(l, j));
    return;
  }
  ForEachOwner(l, j, [&](int o, const ExpertRange&, int64_t row0, int64_t rows) {
    if (rows == 0) return;
    Send(dispatch.get(), mb.expert_output_grads(l).data() + row0 * d, rows * d * sizeof(float), o,
         Tag(kOutputGrads, l, j), &micro_sends[j % W]);
    if (RouteOf(l, j, placement.LocalOf(rank), o)) return;  // its input grads come in the node's (PostNodeGradReceives)
    if (!dedup) {
      input_grads_in[Idx(l, j, o)] = combine->Irecv(mb.dispatched_grads(l).data() + row0 * d,
                                                    rows * d * sizeof(float), o, Tag(kInputGrads, l, j));
    } else {
      // The owner sums each token's input grads: one row per unique token.
      std::vector<float>& sums = grad_sums[Idx(l, j, o)];
      sums.resize(dedups[Idx(l, j, o)].uniques() * d);
      input_grads_in[Idx(l, j, o)] = combine->Irecv(sums.data(), sums.size() * sizeof(float), o,
                                                    Tag(kInputGrads, l, j));
    }
  });
  PostNodeGradReceives(l, j);
}

void DistributedBackend::Impl::BeforeReusingMicro(int j) {
  if (j < W) return;
  for (auto& r : micro_sends[j % W]) r->Wait();
  micro_sends[j % W].clear();
  if (!exchange) return;
  for (int l = 0; l < L; ++l)
    if (const int64_t g = Posted(Channel::kOutputGrads, l, j - W); g >= 0) exchange->Wait(g);
}

void DistributedBackend::Impl::RunAttention(const Task& t, const backend::StepInput& step, float loss_scale) {
  const int l = t.layer, j = t.micro;
  model::MicroBatchStages& mb = Micro(j);
  switch (t.kind) {
    case Task::Kind::kAttnFwd:
      if (l > 0) FinishCombine(l - 1, j);
      else BeforeReusingMicro(j);
      Compute(t, emulation.attention, [&] {
        if (l == 0) {
          const int64_t per = step.global_batch / step.micro_batches;
          const int64_t m = placement.MicroBatchOf(rank, j);
          mb.EmbedForward({step.inputs + m * micro_tokens, step.targets + m * micro_tokens, per, step.seq_len});
        } else {
          mb.CombineForward(l - 1);
        }
        mb.AttentionForward(l);
      });
      PostDispatch(l, j);
      break;
    case Task::Kind::kHead:
      FinishCombine(L - 1, j);
      Compute(t, emulation.attention, [&] {
        mb.CombineForward(L - 1);
        const model::LossParts loss = mb.HeadForward();
        loss_sum += loss.total;
        ce_sum += loss.ce;
        aux_sum += loss.aux;
        const auto counts = mb.ExpertCounts();
        for (int ll = 0; ll < L; ++ll)
          for (int64_t e = 0; e < E; ++e) expert_tokens[ll][e] += counts[ll][e];
        mb.HeadBackward(loss_scale);
        mb.CombineBackward(L - 1);
      });
      PostFinishedGradients(Finished::kHead, 0, j);
      PostBackwardDispatch(L - 1, j);
      break;
    case Task::Kind::kAttnBwd:
      if (exchange) {
        WaitGroup(Channel::kInputGrads, l, j, "combine-grad");
      } else {
        WaitFromOwners(input_grads_in, l, j, "combine-grad");
        if (dedup) FanOutGradSums(l, j);
        ScatterNodeGradSums(l, j);
      }
      Compute(t, emulation.attention, [&] {
        mb.AttentionBackward(l);
        if (l > 0) mb.CombineBackward(l - 1);
        else mb.EmbedBackward();
      });
      PostFinishedGradients(Finished::kAttention, l, j);
      if (l > 0) PostBackwardDispatch(l - 1, j);
      break;
    default:
      break;
  }
}

}  // namespace hetermoe::parallel
