// Notation: B sequences of T tokens, N = B*T; d hidden, H/KV heads of width
// hd, E experts with top-k routing and width f, V vocabulary.
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
  rope_ = ops::MakeRopeTable(seq_len, hd, static_cast<float>(config_.rope_theta));
  layers_.assign(config_.num_hidden_layers, {});
  for (auto& la : layers_) {
    la.resid_in.resize(N * d);
    la.a.resize(N * d);
    la.rstd1.resize(N);
    la.q.resize(N * qd);
    la.k.resize(N * kvd);
    la.v.resize(N * kvd);
    la.attn.resize(N * qd);
    la.lse.resize(batch * config_.num_attention_heads * seq_len);
    la.h_mid.resize(N * d);
    la.m.resize(N * d);
    la.rstd2.resize(N);
    la.xp.resize(N * config_.num_experts_per_tok * d);
  }
  resid_out_.resize(N * d);
  final_normed_.resize(N * d);
  final_rstd_.resize(N);
  logits_.resize(N * config_.vocab_size);
}

std::vector<ops::ExpertWeights> MixtralCpu::ExpertWeightsOf(const float* params,
                                                             int64_t layer) const {
  std::vector<ops::ExpertWeights> w;
  for (const auto& eo : layout_.layers[layer].experts)
    w.push_back({params + eo.w1, params + eo.w2, params + eo.w3});
  return w;
}

LossParts MixtralCpu::Forward(const float* params, const MicroBatch& mb) {
  Resize(mb.batch, mb.seq_len);
  inputs_ = mb.inputs;
  targets_ = mb.targets;
  const int64_t N = tokens_, d = config_.hidden_size, hd = config_.HeadDim();
  const int64_t H = config_.num_attention_heads, KV = config_.num_key_value_heads;
  const int64_t E = config_.num_local_experts, k = config_.num_experts_per_tok;
  const int64_t f = config_.intermediate_size, V = config_.vocab_size;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const ops::AttentionShape shape{batch_, seq_len_, H, KV, hd};

  // h = embed_tokens[x]
  float* h = layers_.empty() ? resid_out_.data() : layers_[0].resid_in.data();
  for (int64_t n = 0; n < N; ++n)
    std::memcpy(h + n * d, params + layout_.embed + int64_t{mb.inputs[n]} * d, sizeof(float) * d);

  aux_counts_.assign(E, 0);
  aux_prob_sums_.assign(E, 0.0);
  aux_rows_ = 0;
  std::vector<float> gate_logits(N * E);
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    LayerActivations& la = layers_[l];
    const LayerOffsets& lo = layout_.layers[l];
    // --- attention block: h_mid = h + o_proj(attn(rope(q), rope(k), v)) ---
    ops::RmsNormForward(N, d, la.resid_in.data(), params + lo.input_norm, eps, la.a.data(),
                        la.rstd1.data());
    ops::LinearForward(N, H * hd, d, la.a.data(), params + lo.q, la.q.data());
    ops::LinearForward(N, KV * hd, d, la.a.data(), params + lo.k, la.k.data());
    ops::LinearForward(N, KV * hd, d, la.a.data(), params + lo.v, la.v.data());
    ops::RopeApply(rope_, N, H, la.q.data(), false);
    ops::RopeApply(rope_, N, KV, la.k.data(), false);
    ops::AttentionForward(shape, la.q.data(), la.k.data(), la.v.data(), la.attn.data(),
                          la.lse.data());
    std::copy(la.resid_in.begin(), la.resid_in.end(), la.h_mid.begin());
    ops::LinearForward(N, d, H * hd, la.attn.data(), params + lo.o, la.h_mid.data(), true);

    // --- MoE block: router -> dispatch -> experts -> combine ---
    ops::RmsNormForward(N, d, la.h_mid.data(), params + lo.post_norm, eps, la.m.data(),
                        la.rstd2.data());
    ops::LinearForward(N, E, d, la.m.data(), params + lo.gate, gate_logits.data());
    ops::RouterForward(N, E, k, gate_logits.data(), &la.router);
    la.plan = ops::MakeDispatchPlan(N, k, E, la.router.topk_expert.data());
    ops::DispatchGather(la.plan, d, la.m.data(), la.xp.data());
    ops::ExpertsForward(la.plan, d, f, 0, ExpertWeightsOf(params, l), la.xp.data(), &la.experts);
    float* h_out = (l + 1 < config_.num_hidden_layers) ? layers_[l + 1].resid_in.data()
                                                       : resid_out_.data();
    std::copy(la.h_mid.begin(), la.h_mid.end(), h_out);
    ops::Combine(la.plan, d, la.router.topk_weight.data(), la.experts.y.data(), h_out);

    for (int64_t e = 0; e < E; ++e) aux_counts_[e] += la.plan.counts[e];
    for (int64_t n = 0; n < N; ++n)
      for (int64_t e = 0; e < E; ++e) aux_prob_sums_[e] += la.router.probs[n * E + e];
    aux_rows_ += N;
  }

  // --- head: logits = lm_head(norm(h)) ---
  ops::RmsNormForward(N, d, resid_out_.data(), params + layout_.final_norm, eps,
                      final_normed_.data(), final_rstd_.data());
  ops::LinearForward(N, V, d, final_normed_.data(), params + layout_.lm_head, logits_.data());

  LossParts loss;
  loss.ce = ops::CrossEntropyForward(N, V, logits_.data(), mb.targets);
  loss.aux = aux_rows_ > 0 ? ops::AuxLoss(E, aux_rows_, aux_counts_, aux_prob_sums_) : 0.0;
  loss.total = loss.ce + config_.router_aux_loss_coef * loss.aux;
  return loss;
}

void MixtralCpu::Backward(const float* params, float* grads, float loss_scale) {
  const int64_t N = tokens_, d = config_.hidden_size, hd = config_.HeadDim();
  const int64_t H = config_.num_attention_heads, KV = config_.num_key_value_heads;
  const int64_t E = config_.num_local_experts, k = config_.num_experts_per_tok;
  const int64_t f = config_.intermediate_size, V = config_.vocab_size;
  const ops::AttentionShape shape{batch_, seq_len_, H, KV, hd};

  // --- head ---
  ops::CrossEntropyBackward(N, V, logits_.data(), targets_, loss_scale / static_cast<float>(N),
                            logits_.data());
  std::vector<float> dnormed(N * d);
  ops::LinearBackwardWeight(N, V, d, logits_.data(), final_normed_.data(), grads + layout_.lm_head);
  ops::LinearBackwardInput(N, V, d, logits_.data(), params + layout_.lm_head, dnormed.data(), false);
  std::vector<float> dh(N * d, 0.0f);  // gradient of the residual stream
  ops::RmsNormBackward(N, d, dnormed.data(), resid_out_.data(), params + layout_.final_norm,
                       final_rstd_.data(), dh.data(), grads + layout_.final_norm);

  // d(loss_scale * coef * aux)/dp[r, e] = scale * coef * E * F_e / rows, F_e = counts_e / rows.
  std::vector<float> aux_dprob(E);
  for (int64_t e = 0; e < E; ++e)
    aux_dprob[e] = static_cast<float>(loss_scale * config_.router_aux_loss_coef * E *
                                      (static_cast<double>(aux_counts_[e]) / aux_rows_) /
                                      aux_rows_);

  const int64_t A = N * k;
  std::vector<float> dy(A * d), dxp(A * d), dweight(N * k), dgate(N * E);
  std::vector<float> dq(N * H * hd), dk(N * KV * hd), dv(N * KV * hd), dattn(N * H * hd);
  for (int64_t l = config_.num_hidden_layers - 1; l >= 0; --l) {
    LayerActivations& la = layers_[l];
    const LayerOffsets& lo = layout_.layers[l];
    float* glayer = grads;

    // --- MoE block backward: combine -> experts -> dispatch, and the router ---
    // dh is the gradient w.r.t. h_out = h_mid + moe(m); it flows to h_mid as is.
    ops::CombineBackward(la.plan, d, la.router.topk_weight.data(), la.experts.y.data(), dh.data(),
                         dy.data(), dweight.data());
    std::vector<ops::ExpertGrads> egrads;
    for (const auto& eo : lo.experts) egrads.push_back({glayer + eo.w1, glayer + eo.w2, glayer + eo.w3});
    ops::ExpertsBackward(la.plan, d, f, 0, ExpertWeightsOf(params, l), egrads, la.xp.data(),
                         la.experts, dy.data(), dxp.data());
    std::vector<float> dm(N * d, 0.0f);
    ops::DispatchScatterAdd(la.plan, d, dxp.data(), dm.data());
    // The gate's second branch: the routing weights scale the expert outputs.
    ops::RouterBackward(N, E, k, la.router, dweight.data(), aux_dprob.data(), dgate.data());
    ops::LinearBackwardWeight(N, E, d, dgate.data(), la.m.data(), grads + lo.gate);
    ops::LinearBackwardInput(N, E, d, dgate.data(), params + lo.gate, dm.data(), true);
    ops::RmsNormBackward(N, d, dm.data(), la.h_mid.data(), params + lo.post_norm, la.rstd2.data(),
                         dh.data(), grads + lo.post_norm);

    // --- attention block backward ---
    ops::LinearBackwardWeight(N, d, H * hd, dh.data(), la.attn.data(), grads + lo.o);
    ops::LinearBackwardInput(N, d, H * hd, dh.data(), params + lo.o, dattn.data(), false);
    ops::AttentionBackward(shape, la.q.data(), la.k.data(), la.v.data(), la.attn.data(),
                           la.lse.data(), dattn.data(), dq.data(), dk.data(), dv.data());
    ops::RopeApply(rope_, N, H, dq.data(), true);
    ops::RopeApply(rope_, N, KV, dk.data(), true);
    std::vector<float>& da = dm;  // reuse: gradient w.r.t. the normed input
    ops::LinearBackwardWeight(N, H * hd, d, dq.data(), la.a.data(), grads + lo.q);
    ops::LinearBackwardWeight(N, KV * hd, d, dk.data(), la.a.data(), grads + lo.k);
    ops::LinearBackwardWeight(N, KV * hd, d, dv.data(), la.a.data(), grads + lo.v);
    ops::LinearBackwardInput(N, H * hd, d, dq.data(), params + lo.q, da.data(), false);
    ops::LinearBackwardInput(N, KV * hd, d, dk.data(), params + lo.k, da.data(), true);
    ops::LinearBackwardInput(N, KV * hd, d, dv.data(), params + lo.v, da.data(), true);
    ops::RmsNormBackward(N, d, da.data(), la.resid_in.data(), params + lo.input_norm,
                         la.rstd1.data(), dh.data(), grads + lo.input_norm);
  }

  // --- embedding backward: scatter-add rows (serial: ids repeat) ---
  float* gembed = grads + layout_.embed;
  for (int64_t n = 0; n < N; ++n) {
    float* row = gembed + int64_t{inputs_[n]} * d;
    const float* g = dh.data() + n * d;
    for (int64_t j = 0; j < d; ++j) row[j] += g[j];
  }
}

std::vector<std::vector<int64_t>> MixtralCpu::ExpertCounts() const {
  std::vector<std::vector<int64_t>> counts;
  for (const auto& la : layers_) counts.push_back(la.plan.counts);
  return counts;
}

}  // namespace hetermoe::model
