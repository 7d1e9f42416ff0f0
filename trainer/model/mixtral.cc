// Notation: B sequences of T tokens, N = B*T; d hidden, H/KV heads of width
// hd, E experts with top-k routing and width f, V vocabulary, A = N*k
// dispatched rows.
#include "trainer/model/mixtral.h"

#include <algorithm>
#include <cstring>

#include "trainer/ops/cross_entropy.h"
#include "trainer/ops/gemm.h"
#include "trainer/ops/rmsnorm.h"

namespace hetermoe::model {

MixtralCpu::MixtralCpu(const io::MixtralConfig& config, const ParameterLayout& layout)
    : config_(config), layout_(layout) {}

void MixtralCpu::Resize(int64_t batch, int64_t seq_len) {
  if (batch == batch_ && seq_len == seq_len_) return;
  batch_ = batch;
  seq_len_ = seq_len;
  tokens_ = batch * seq_len;
  const int64_t N = tokens_, d = config_.hidden_size, hd = config_.HeadDim();
  const int64_t qd = config_.num_attention_heads * hd, kvd = config_.num_key_value_heads * hd;
  const int64_t A = N * config_.num_experts_per_tok;
  rope_ = ops::MakeRopeTable(seq_len, config_);
  layers_.assign(config_.num_hidden_layers, {});
  for (auto& la : layers_) {
    la.resid_in.resize(N * d);
    if (!shared_att_) SizeAttention(la.att);
    la.xp.resize(A * d);
    la.experts.y.resize(A * d);
    la.dy.resize(A * d);
    la.dxp.resize(A * d);
    la.dweight.resize(N * config_.num_experts_per_tok);
  }
  resid_out_.resize(N * d);
  final_normed_.resize(N * d);
  final_rstd_.resize(N);
  logits_.resize(N * config_.vocab_size);
  dh_.resize(N * d);
  gate_logits_.resize(N * config_.num_local_experts);
  dm_.resize(N * d);
  dattn_.resize(N * qd);
  dq_.resize(N * qd);
  dk_.resize(N * kvd);
  dv_.resize(N * kvd);
}

void MixtralCpu::SizeAttention(AttentionActivations& at) const {
  const int64_t N = tokens_, d = config_.hidden_size, hd = config_.HeadDim();
  const int64_t qd = config_.num_attention_heads * hd, kvd = config_.num_key_value_heads * hd;
  at.a.resize(N * d);
  at.rstd1.resize(N);
  at.q.resize(N * qd);
  at.k.resize(N * kvd);
  at.v.resize(N * kvd);
  at.attn.resize(N * qd);
  at.lse.resize(batch_ * config_.num_attention_heads * seq_len_);
  at.h_mid.resize(N * d);
  at.m.resize(N * d);
  at.rstd2.resize(N);
}

void MixtralCpu::RecomputeAttention(std::shared_ptr<AttentionActivations> shared) {
  shared_att_ = std::move(shared);
  batch_ = seq_len_ = tokens_ = 0;  // the next EmbedForward sizes the layers again
}

std::vector<ops::ExpertWeights> MixtralCpu::ExpertWeightsOf(const float* params, int64_t layer,
                                                             int64_t first, int64_t count) const {
  std::vector<ops::ExpertWeights> w;
  for (int64_t e = first; e < first + count; ++e) {
    const auto& eo = layout_.layers[layer].experts[e];
    w.push_back({params + eo.w1, params + eo.w2, params + eo.w3});
  }
  return w;
}

float* MixtralCpu::ResidualOut(int64_t layer) {
  return layer + 1 < config_.num_hidden_layers ? layers_[layer + 1].resid_in.data()
                                               : resid_out_.data();
}

// ---------------------------------------------------------------- forward --

void MixtralCpu::EmbedForward(const float* params, const MicroBatch& mb) {
  Resize(mb.batch, mb.seq_len);
  inputs_ = mb.inputs;
  targets_ = mb.targets;
  const int64_t d = config_.hidden_size, E = config_.num_local_experts;
  float* h = layers_.empty() ? resid_out_.data() : layers_[0].resid_in.data();
  for (int64_t n = 0; n < tokens_; ++n)
    std::memcpy(h + n * d, params + layout_.embed + int64_t{mb.inputs[n]} * d, sizeof(float) * d);
  aux_counts_.assign(E, 0);
  aux_prob_sums_.assign(E, 0.0);
  aux_rows_ = 0;
}

void MixtralCpu::AttentionBlock(const float* params, int64_t l, AttentionActivations& at, float* h_mid) {
  const int64_t N = tokens_, d = config_.hidden_size, hd = config_.HeadDim();
  const int64_t H = config_.num_attention_heads, KV = config_.num_key_value_heads;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const float* h = layers_[l].resid_in.data();
  const LayerOffsets& lo = layout_.layers[l];
  // h_mid = h + o_proj(attention(rope(q), rope(k), v)) over RMSNorm_in(h)
  ops::RmsNormForward(N, d, h, params + lo.input_norm, eps, at.a.data(), at.rstd1.data());
  ops::LinearForward(N, H * hd, d, at.a.data(), params + lo.q, at.q.data());
  ops::LinearForward(N, KV * hd, d, at.a.data(), params + lo.k, at.k.data());
  ops::LinearForward(N, KV * hd, d, at.a.data(), params + lo.v, at.v.data());
  ops::RopeApply(rope_, N, H, at.q.data(), false);
  ops::RopeApply(rope_, N, KV, at.k.data(), false);
  ops::AttentionForward({batch_, seq_len_, H, KV, hd, config_.sliding_window}, at.q.data(), at.k.data(), at.v.data(), at.attn.data(),
                        at.lse.data());
  std::copy(h, h + N * d, h_mid);
  ops::LinearForward(N, d, H * hd, at.attn.data(), params + lo.o, h_mid, true);
  // the MoE's input
  ops::RmsNormForward(N, d, h_mid, params + lo.post_norm, eps, at.m.data(), at.rstd2.data());
}

void MixtralCpu::AttentionForward(const float* params, int64_t l) {
  const int64_t N = tokens_, d = config_.hidden_size;
  const int64_t E = config_.num_local_experts, k = config_.num_experts_per_tok;
  LayerActivations& la = layers_[l];
  AttentionActivations& at = Att(l);
  // Recomputed: the shared set sized for this micro-batch, and the residual
  // after attention written where CombineForward adds the experts to it.
  if (shared_att_) SizeAttention(at);
  AttentionBlock(params, l, at, shared_att_ ? ResidualOut(l) : at.h_mid.data());

  // router -> dispatch plan -> gather rows by expert
  ops::LinearForward(N, E, d, at.m.data(), params + layout_.layers[l].gate, gate_logits_.data());
  ops::RouterForward(N, E, k, gate_logits_.data(), &la.router);
  la.plan = ops::MakeDispatchPlan(N, k, E, la.router.topk_expert.data());
  ops::DispatchGather(la.plan, d, at.m.data(), la.xp.data());

  for (int64_t e = 0; e < E; ++e) aux_counts_[Original(l, e)] += la.plan.counts[e];
  for (int64_t n = 0; n < N; ++n)
    for (int64_t e = 0; e < E; ++e) aux_prob_sums_[Original(l, e)] += la.router.probs[n * E + e];
  aux_rows_ += N;
}

void MixtralCpu::ExpertsForward(const float* params, int64_t l, int64_t first, int64_t count) {
  LayerActivations& la = layers_[l];
  ops::ExpertsForward(la.plan, config_.hidden_size, config_.intermediate_size, first,
                      ExpertWeightsOf(params, l, first, count), la.xp.data(), &la.experts);
}

void MixtralCpu::CombineForward(int64_t l) {
  LayerActivations& la = layers_[l];
  float* h_out = ResidualOut(l);
  // Recomputed attention wrote the residual after attention into h_out.
  if (!shared_att_) std::copy(la.att.h_mid.begin(), la.att.h_mid.end(), h_out);
  ops::Combine(la.plan, config_.hidden_size, la.router.topk_weight.data(), la.experts.y.data(),
               h_out);
}

LossParts MixtralCpu::HeadForward(const float* params) {
  const int64_t N = tokens_, d = config_.hidden_size, V = config_.vocab_size;
  const int64_t E = config_.num_local_experts;
  ops::RmsNormForward(N, d, resid_out_.data(), params + layout_.final_norm,
                      static_cast<float>(config_.rms_norm_eps), final_normed_.data(),
                      final_rstd_.data());
  ops::LinearForward(N, V, d, final_normed_.data(), params + layout_.lm_head, logits_.data());
  LossParts loss;
  loss.ce = ops::CrossEntropyForward(N, V, logits_.data(), targets_);
  loss.aux = aux_rows_ > 0 ? ops::AuxLoss(E, aux_rows_, aux_counts_, aux_prob_sums_) : 0.0;
  loss.total = loss.ce + config_.router_aux_loss_coef * loss.aux;
  return loss;
}

LossParts MixtralCpu::Forward(const float* params, const MicroBatch& mb) {
  EmbedForward(params, mb);
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    AttentionForward(params, l);
    ExpertsForward(params, l, 0, config_.num_local_experts);
    CombineForward(l);
  }
  return HeadForward(params);
}

// --------------------------------------------------------------- backward --

void MixtralCpu::HeadBackward(const float* params, float* grads, float loss_scale) {
  const int64_t N = tokens_, d = config_.hidden_size, V = config_.vocab_size;
  const int64_t E = config_.num_local_experts;
  ops::CrossEntropyBackward(N, V, logits_.data(), targets_, loss_scale / static_cast<float>(N),
                            logits_.data());
  ops::LinearBackwardWeight(N, V, d, logits_.data(), final_normed_.data(), grads + layout_.lm_head);
  ops::LinearBackwardInput(N, V, d, logits_.data(), params + layout_.lm_head, dm_.data(), false);
  std::fill(dh_.begin(), dh_.end(), 0.0f);
  ops::RmsNormBackward(N, d, dm_.data(), resid_out_.data(), params + layout_.final_norm,
                       final_rstd_.data(), dh_.data(), grads + layout_.final_norm);
  // d(loss_scale * coef * aux)/dp[r, e] = scale * coef * E * F_e / rows, with
  // F_e = counts_e / rows held constant (Switch/Mixtral).
  aux_dprob_.resize(E);
  for (int64_t e = 0; e < E; ++e)
    aux_dprob_[e] = static_cast<float>(loss_scale * config_.router_aux_loss_coef * E *
                                       (static_cast<double>(aux_counts_[e]) / aux_rows_) /
                                       aux_rows_);
}

void MixtralCpu::CombineBackward(int64_t l) {
  // dh_ is the gradient w.r.t. h_out = h_mid + moe(m); it flows to h_mid as is.
  LayerActivations& la = layers_[l];
  ops::CombineBackward(la.plan, config_.hidden_size, la.router.topk_weight.data(),
                       la.experts.y.data(), dh_.data(), la.dy.data(), la.dweight.data());
}

void MixtralCpu::ExpertsBackward(const float* params, float* grads, int64_t l, int64_t first,
                                 int64_t count) {
  LayerActivations& la = layers_[l];
  std::vector<ops::ExpertGrads> g;
  for (int64_t e = first; e < first + count; ++e) {
    const auto& eo = layout_.layers[l].experts[e];
    g.push_back({grads + eo.w1, grads + eo.w2, grads + eo.w3});
  }
  ops::ExpertsBackward(la.plan, config_.hidden_size, config_.intermediate_size, first,
                       ExpertWeightsOf(params, l, first, count), g, la.xp.data(), la.experts,
                       la.dy.data(), la.dxp.data());
}

void MixtralCpu::AttentionBackward(const float* params, float* grads, int64_t l) {
  const int64_t N = tokens_, d = config_.hidden_size, hd = config_.HeadDim();
  const int64_t H = config_.num_attention_heads, KV = config_.num_key_value_heads;
  const int64_t E = config_.num_local_experts, k = config_.num_experts_per_tok;
  LayerActivations& la = layers_[l];
  const LayerOffsets& lo = layout_.layers[l];
  AttentionActivations& at = Att(l);
  if (shared_att_) AttentionBlock(params, l, at, at.h_mid.data());  // the forward's values again

  // MoE input gradient: the experts' branch (scatter of dxp) plus the gate's
  // branch (the routing weights scale the expert outputs).
  std::vector<float>& dm = dm_;
  std::vector<float>& dgate = gate_logits_;
  std::fill(dm.begin(), dm.end(), 0.0f);
  ops::DispatchScatterAdd(la.plan, d, la.dxp.data(), dm.data());
  const float* dprob = aux_dprob_.data();
  if (order_ && !order_->empty()) {
    layer_dprob_.resize(E);
    for (int64_t e = 0; e < E; ++e) layer_dprob_[e] = aux_dprob_[Original(l, e)];
    dprob = layer_dprob_.data();
  }
  ops::RouterBackward(N, E, k, la.router, la.dweight.data(), dprob, dgate.data());
  ops::LinearBackwardWeight(N, E, d, dgate.data(), at.m.data(), grads + lo.gate);
  ops::LinearBackwardInput(N, E, d, dgate.data(), params + lo.gate, dm.data(), true);
  ops::RmsNormBackward(N, d, dm.data(), at.h_mid.data(), params + lo.post_norm, at.rstd2.data(),
                       dh_.data(), grads + lo.post_norm);

  // attention block
  std::vector<float>&dattn = dattn_, &dq = dq_, &dk = dk_, &dv = dv_;
  ops::LinearBackwardWeight(N, d, H * hd, dh_.data(), at.attn.data(), grads + lo.o);
  ops::LinearBackwardInput(N, d, H * hd, dh_.data(), params + lo.o, dattn.data(), false);
  ops::AttentionBackward({batch_, seq_len_, H, KV, hd, config_.sliding_window}, at.q.data(), at.k.data(), at.v.data(),
                         at.attn.data(), at.lse.data(), dattn.data(), dq.data(), dk.data(),
                         dv.data());
  ops::RopeApply(rope_, N, H, dq.data(), true);
  ops::RopeApply(rope_, N, KV, dk.data(), true);
  std::vector<float>& da = dm;  // reuse: gradient w.r.t. the normed input
  ops::LinearBackwardWeight(N, H * hd, d, dq.data(), at.a.data(), grads + lo.q);
  ops::LinearBackwardWeight(N, KV * hd, d, dk.data(), at.a.data(), grads + lo.k);
  ops::LinearBackwardWeight(N, KV * hd, d, dv.data(), at.a.data(), grads + lo.v);
  ops::LinearBackwardInput(N, H * hd, d, dq.data(), params + lo.q, da.data(), false);
  ops::LinearBackwardInput(N, KV * hd, d, dk.data(), params + lo.k, da.data(), true);
  ops::LinearBackwardInput(N, KV * hd, d, dv.data(), params + lo.v, da.data(), true);
  ops::RmsNormBackward(N, d, da.data(), la.resid_in.data(), params + lo.input_norm,
                       at.rstd1.data(), dh_.data(), grads + lo.input_norm);
}

void MixtralCpu::EmbedBackward(float* grads) {
  // Serial scatter-add: token ids repeat, so rows would race.
  const int64_t d = config_.hidden_size;
  float* gembed = grads + layout_.embed;
  for (int64_t n = 0; n < tokens_; ++n) {
    float* row = gembed + int64_t{inputs_[n]} * d;
    const float* g = dh_.data() + n * d;
    for (int64_t j = 0; j < d; ++j) row[j] += g[j];
  }
}

void MixtralCpu::Backward(const float* params, float* grads, float loss_scale) {
  HeadBackward(params, grads, loss_scale);
  for (int64_t l = config_.num_hidden_layers - 1; l >= 0; --l) {
    CombineBackward(l);
    ExpertsBackward(params, grads, l, 0, config_.num_local_experts);
    AttentionBackward(params, grads, l);
  }
  EmbedBackward(grads);
}

std::vector<std::vector<int64_t>> MixtralCpu::ExpertCounts() const {
  std::vector<std::vector<int64_t>> counts;
  for (const auto& la : layers_) counts.push_back(la.plan.counts);
  return counts;
}

}  // namespace hetermoe::model
