// AdamW over the flat parameter buffer, as torch.optim.AdamW, plus global
// gradient-norm clipping as torch.nn.utils.clip_grad_norm_.
#pragma once

#include <cstdint>
#include <vector>

#include "trainer/model/parameters.h"

namespace hetermoe::optim {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

// Moments are laid out like the parameters (so checkpoints reuse the names).
class AdamW {
 public:
  AdamW(const model::ParameterLayout& layout, AdamWOptions options);
  // Moments only for the tensors with with_moments[i] (per layout tensor),
  // packed in layout order: the tensors this optimizer updates (ZeRO-1: a
  // rank keeps the moments of its shard of the replicated tensors).
  AdamW(const model::ParameterLayout& layout, AdamWOptions options, const std::vector<bool>& with_moments);

  // One update with learning rate `lr` of the tensors with moments;
  // increments step(). With `only`, the tensors whose entry is false are
  // left alone too (a distributed rank updates just the tensors it owns).
  void Step(float* params, const float* grads, double lr, const std::vector<bool>* only = nullptr);
  // Where tensor i's moments start in exp_avg()/exp_avg_sq(); -1 without.
  int64_t moment_offset(size_t i) const { return moment_offset_[i]; }

  int64_t step() const { return step_; }
  void set_step(int64_t step) { step_ = step; }
  std::vector<float>& exp_avg() { return exp_avg_; }
  std::vector<float>& exp_avg_sq() { return exp_avg_sq_; }

 private:
  const model::ParameterLayout& layout_;
  AdamWOptions options_;
  int64_t step_ = 0;
  std::vector<float> exp_avg_, exp_avg_sq_;
  std::vector<int64_t> moment_offset_;  // per layout tensor
};

// L2 norm of the whole gradient (accumulated in double).
double GlobalGradNorm(const float* grads, int64_t n);
// If max_norm > 0, scales grads by max_norm / (norm + 1e-6) when that is < 1,
// as clip_grad_norm_ does. Returns the norm before clipping.
double ClipGradNorm(float* grads, int64_t n, double max_norm);

}  // namespace hetermoe::optim
