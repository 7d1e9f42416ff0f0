// The Mixtral forward and backward pass on the CPU, one micro-batch at a time.
//
// Reads as the model does: embed -> L x (RMSNorm, attention, residual,
// RMSNorm, router -> dispatch -> experts -> combine, residual) -> RMSNorm ->
// lm_head -> cross-entropy (+ load-balancing loss). Forward keeps the
// activations backward needs; backward accumulates into a gradient buffer laid
// out like the parameters (ParameterLayout), so gradient accumulation over
// micro-batches is just repeated Backward calls.
//
// Not thread-safe: one instance per training loop; the ops inside use the
// process's OpenMP/BLAS threads.
#pragma once

#include <cstdint>
#include <vector>

#include "trainer/io/mixtral_config.h"
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
  MixtralCpu(const io::MixtralConfig& config, const ParameterLayout& layout);

  // Computes logits and the loss; keeps what Backward needs.
  LossParts Forward(const float* params, const MicroBatch& batch);
  // Adds d(loss_scale * total)/d(params) into grads (the layout's buffer).
  // Must follow Forward with the same params.
  void Backward(const float* params, float* grads, float loss_scale);

  // After Forward: logits[N, V] (overwritten by Backward).
  const std::vector<float>& logits() const { return logits_; }
  // After Forward: (token, slot) assignments per expert, [L][E].
  std::vector<std::vector<int64_t>> ExpertCounts() const;

 private:
  struct LayerActivations {
    std::vector<float> resid_in;      // [N, d] layer input (residual stream)
    std::vector<float> a, rstd1;      // normed input [N, d], [N]
    std::vector<float> q, k, v;       // after RoPE
    std::vector<float> attn, lse;     // attention output [N, H*hd], [B, H, T]
    std::vector<float> h_mid;         // [N, d] after the attention residual
    std::vector<float> m, rstd2;      // normed for the MoE
    ops::RouterOutput router;
    ops::DispatchPlan plan;
    std::vector<float> xp;            // dispatched tokens [N*k, d]
    ops::ExpertActivations experts;
  };

  void Resize(int64_t batch, int64_t seq_len);
  std::vector<ops::ExpertWeights> ExpertWeightsOf(const float* params, int64_t layer) const;

  io::MixtralConfig config_;
  const ParameterLayout& layout_;
  int64_t batch_ = 0, seq_len_ = 0, tokens_ = 0;
  ops::RopeTable rope_;
  const int32_t* inputs_ = nullptr;
  const int32_t* targets_ = nullptr;

  std::vector<LayerActivations> layers_;
  std::vector<float> resid_out_;          // [N, d] residual after the last layer
  std::vector<float> final_normed_, final_rstd_;
  std::vector<float> logits_;
  std::vector<int64_t> aux_counts_;       // [E] over all layers
  std::vector<double> aux_prob_sums_;     // [E] over all layers
  int64_t aux_rows_ = 0;
};

}  // namespace hetermoe::model
