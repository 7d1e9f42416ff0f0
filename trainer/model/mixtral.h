// The Mixtral forward and backward pass on the CPU, one micro-batch per
// instance, callable whole (Forward/Backward) or stage by stage.
//
// Reads as the model does: embed -> L x (RMSNorm, attention, residual,
// RMSNorm, router -> dispatch -> experts -> combine, residual) -> RMSNorm ->
// lm_head -> cross-entropy (+ load-balancing loss).
//
// The stage functions exist for the distributed engine, where the experts of
// a layer run on other ranks: after AttentionForward(l) the dispatched rows
// (dispatched(l), grouped by expert as plan(l) says) go out, the expert
// outputs come back into expert_outputs(l), and CombineForward(l) adds them
// into the residual stream. Backward mirrors it with CombineBackward(l)
// producing expert_output_grads(l) and AttentionBackward(l) consuming
// dispatched_grads(l). Forward/Backward are exactly those stages with every
// expert run locally.
//
// Backward accumulates into a gradient buffer laid out like the parameters
// (ParameterLayout), so gradient accumulation is repeated Backward calls.
// Not thread-safe; the ops inside use the process's OpenMP/BLAS threads.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "common/mixtral_config.h"
#include "trainer/model/parameters.h"
#include "trainer/ops/attention.h"
#include "trainer/ops/experts.h"
#include "trainer/ops/rope.h"
#include "trainer/ops/router.h"

namespace hetermoe::model {

struct MicroBatch {
  const int32_t* inputs;   // [batch * seq_len]
  const int32_t* targets;  // [batch * seq_len]
  int64_t batch;
  int64_t seq_len;
};

struct LossParts {
  double ce = 0.0;    // mean cross-entropy over the micro-batch's tokens
  double aux = 0.0;   // load-balancing loss over all layers' router outputs
  double total = 0.0; // ce + router_aux_loss_coef * aux
};

class MixtralCpu {
 public:
  // What one layer's attention block leaves for its backward: the normed
  // input, q/k/v after RoPE, the attention output and its log-sum-exp, the
  // residual after attention, and the MoE's normed input.
  struct AttentionActivations {
    std::vector<float> a, rstd1;   // [N, d], [N]
    std::vector<float> q, k, v;    // [N, H*hd], [N, KV*hd] x2
    std::vector<float> attn, lse;  // [N, H*hd], [B, H, T]
    std::vector<float> h_mid;      // [N, d]
    std::vector<float> m, rstd2;   // [N, d], [N]
  };

  MixtralCpu(const io::MixtralConfig& config, const ParameterLayout& layout);

  // train.recompute attention: keep of each layer only its input, the
  // router's outputs and the rows; the attention block's activations live in
  // `shared` (one set for every instance given it, used one call at a time)
  // and are computed again before each layer's backward: the same values,
  // so the same training. Call before the first Forward/EmbedForward.
  void RecomputeAttention(std::shared_ptr<AttentionActivations> shared);
  // The experts' original indices by slot (stages.h's ExpertOrder; null or
  // empty = identity): the aux loss sums per original expert.
  void SetExpertOrder(std::shared_ptr<const std::vector<std::vector<int32_t>>> order) { order_ = std::move(order); }

  // --- whole passes ---
  // Computes logits and the loss; keeps what Backward needs.
  LossParts Forward(const float* params, const MicroBatch& batch);
  // Adds d(loss_scale * total)/d(params) into grads. Must follow Forward.
  void Backward(const float* params, float* grads, float loss_scale);

  // --- forward stages ---
  void EmbedForward(const float* params, const MicroBatch& batch);
  // Attention block, router and dispatch gather of layer l.
  void AttentionForward(const float* params, int64_t layer);
  // Runs experts [first, first + count) of layer l on their dispatched rows.
  void ExpertsForward(const float* params, int64_t layer, int64_t first, int64_t count);
  // Residual + combine of layer l's expert outputs.
  void CombineForward(int64_t layer);
  LossParts HeadForward(const float* params);

  // --- backward stages ---
  void HeadBackward(const float* params, float* grads, float loss_scale);
  void CombineBackward(int64_t layer);
  void ExpertsBackward(const float* params, float* grads, int64_t layer, int64_t first,
                       int64_t count);
  void AttentionBackward(const float* params, float* grads, int64_t layer);
  void EmbedBackward(float* grads);

  // --- what crosses between attention and expert ranks (rows by expert) ---
  const ops::DispatchPlan& plan(int64_t layer) const { return layers_[layer].plan; }
  std::vector<float>& dispatched(int64_t layer) { return layers_[layer].xp; }              // [A, d]
  std::vector<float>& expert_outputs(int64_t layer) { return layers_[layer].experts.y; }   // [A, d]
  std::vector<float>& expert_output_grads(int64_t layer) { return layers_[layer].dy; }     // [A, d]
  std::vector<float>& dispatched_grads(int64_t layer) { return layers_[layer].dxp; }       // [A, d]

  // After Forward: logits[N, V] (overwritten by Backward).
  const std::vector<float>& logits() const { return logits_; }
  // After Forward: (token, slot) assignments per expert, [L][E].
  std::vector<std::vector<int64_t>> ExpertCounts() const;
  int64_t tokens() const { return tokens_; }

 private:
  struct LayerActivations {
    std::vector<float> resid_in;      // [N, d] layer input (residual stream)
    AttentionActivations att;         // empty when recomputed
    ops::RouterOutput router;
    ops::DispatchPlan plan;
    std::vector<float> xp;            // dispatched tokens [N*k, d]
    ops::ExpertActivations experts;   // y = expert outputs [N*k, d]
    std::vector<float> dy, dxp;       // their gradients [N*k, d]
    std::vector<float> dweight;       // d loss / d top-k weights [N, k]
  };

  void Resize(int64_t batch, int64_t seq_len);
  void SizeAttention(AttentionActivations& at) const;
  // Layer l's attention block over its input into `at`, the residual after
  // it into h_mid (which may be outside `at`), and the MoE's RMSNorm.
  void AttentionBlock(const float* params, int64_t layer, AttentionActivations& at, float* h_mid);
  AttentionActivations& Att(int64_t layer) { return shared_att_ ? *shared_att_ : layers_[layer].att; }
  std::vector<ops::ExpertWeights> ExpertWeightsOf(const float* params, int64_t layer,
                                                  int64_t first, int64_t count) const;
  float* ResidualOut(int64_t layer);

  io::MixtralConfig config_;
  const ParameterLayout& layout_;
  int64_t batch_ = 0, seq_len_ = 0, tokens_ = 0;
  ops::RopeTable rope_;
  const int32_t* inputs_ = nullptr;
  const int32_t* targets_ = nullptr;

  std::vector<LayerActivations> layers_;
  std::shared_ptr<AttentionActivations> shared_att_;  // train.recompute attention
  std::vector<float> resid_out_;          // [N, d] residual after the last layer
  std::vector<float> final_normed_, final_rstd_;
  std::vector<float> logits_;
  std::vector<int64_t> aux_counts_;       // [E] over all layers
  std::vector<double> aux_prob_sums_;     // [E] over all layers
  int64_t aux_rows_ = 0;
  std::vector<float> aux_dprob_;          // [E] set by HeadBackward, by original expert
  std::vector<float> layer_dprob_;        // [E] aux_dprob_ in one layer's slot order
  std::shared_ptr<const std::vector<std::vector<int32_t>>> order_;
  int64_t Original(int64_t l, int64_t e) const { return order_ && !order_->empty() ? (*order_)[l][e] : e; }
  std::vector<float> dh_;                 // [N, d] gradient of the residual stream
  // Scratch reused by every layer (sized once in Resize, not per call).
  std::vector<float> gate_logits_;        // [N, E]; backward: d loss / d gate logits
  std::vector<float> dm_;                 // [N, d] gradient w.r.t. a normed input
  std::vector<float> dattn_, dq_, dk_, dv_;
};

}  // namespace hetermoe::model
