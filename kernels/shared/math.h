// Scalar math shared by the CPU backend (trainer/ops) and the CUDA kernels.
//
// Every function here is the single definition of an element-wise formula:
// the CPU ops call it in their loops and the CUDA kernels call it per thread,
// so the CPU tests (checked against PyTorch) exercise the very code the GPU
// runs. Keep these free of memory access and side effects.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define HM_HD __host__ __device__ __forceinline__
#else
#define HM_HD inline
#endif

namespace hetermoe::math {

HM_HD float Sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// SiLU (swish): x * sigmoid(x), the gate activation of a SwiGLU expert.
HM_HD float Silu(float x) { return x * Sigmoid(x); }

// d/dx silu(x) = s + x s (1 - s), with s = sigmoid(x).
HM_HD float SiluGrad(float x) {
  const float s = Sigmoid(x);
  return s * (1.0f + x * (1.0f - s));
}

// SwiGLU expert activation: act = silu(g1) * g3, with g1 = x W1^T (gate
// branch) and g3 = x W3^T (up branch).
HM_HD float SwiGlu(float g1, float g3) { return Silu(g1) * g3; }

// Backward of SwiGlu for the incoming gradient dact.
HM_HD void SwiGluBackward(float g1, float g3, float dact, float& dg1, float& dg3) {
  dg1 = dact * g3 * SiluGrad(g1);
  dg3 = dact * Silu(g1);
}

// RMSNorm: the reciprocal RMS of a row of width d from its sum of squares.
HM_HD float RmsNormRstd(float sum_sq, int64_t d, float eps) {
  return 1.0f / sqrtf(sum_sq / static_cast<float>(d) + eps);
}

// RMSNorm backward, with r = rstd and dot = sum_j w_j dy_j x_j over the row:
//   dx_j = r w_j dy_j - shift x_j,   shift = r^3 dot / d.
HM_HD float RmsNormBackwardShift(float rstd, float dot, int64_t d) {
  return rstd * rstd * rstd * dot / static_cast<float>(d);
}
HM_HD float RmsNormInputGrad(float rstd, float w, float dy, float x, float shift) {
  return rstd * w * dy - shift * x;
}

// Cross-entropy gradient of one logit of a row with maximum `row_max` and
// 1 / sum(exp(logit - row_max)) = inv_sum: (softmax - onehot) * scale.
HM_HD float CrossEntropyGrad(float logit, float row_max, float inv_sum, bool is_target,
                             float scale) {
  const float g = expf(logit - row_max) * inv_sum * scale;
  return is_target ? g - scale : g;
}

// Attention softmax backward for one (query, key) pair: with p the
// probability, dp = dout . v_key and D = dout . out of the query row (the
// softmax-backward shift), the gradient of the pre-scale score q . k.
HM_HD float AttentionScoreGrad(float p, float dp, float D, float scale) {
  return p * (dp - D) * scale;
}

// RoPE inverse frequency of pair i for head dim hd, computed in fp32 as
// Hugging Face does: 1 / theta^(2i/hd).
HM_HD float RopeInvFreq(int i, int head_dim, float theta) {
  return 1.0f / powf(theta, static_cast<float>(2 * i) / static_cast<float>(head_dim));
}

// Rotate-half RoPE on one (x1, x2) pair: x1 from the first half of the head
// dim, x2 from the second. Backward is the same rotation with -sin.
HM_HD void RopeRotate(float& x1, float& x2, float cos_a, float sin_a) {
  const float a = x1, b = x2;
  x1 = a * cos_a - b * sin_a;
  x2 = b * cos_a + a * sin_a;
}

// One AdamW step on one element, exactly torch.optim.AdamW (non-amsgrad):
// decoupled decay first, then the bias-corrected Adam update.
struct AdamWStep {
  float lr, beta1, beta2, eps, weight_decay;
  float bias_correction1;       // 1 - beta1^t
  float bias_correction2_sqrt;  // sqrt(1 - beta2^t)
};

HM_HD void AdamWUpdate(float& param, float grad, float& exp_avg, float& exp_avg_sq,
                       const AdamWStep& s, bool decay) {
  if (decay) param *= 1.0f - s.lr * s.weight_decay;
  exp_avg = s.beta1 * exp_avg + (1.0f - s.beta1) * grad;
  exp_avg_sq = s.beta2 * exp_avg_sq + (1.0f - s.beta2) * grad * grad;
  const float denom = sqrtf(exp_avg_sq) / s.bias_correction2_sqrt + s.eps;
  param -= (s.lr / s.bias_correction1) * (exp_avg / denom);
}

// The per-step constants of AdamW, with torch's bias corrections computed in
// double (Python floats) for optimizer step `step` (1-based). Host only.
inline AdamWStep MakeAdamWStep(double lr, double beta1, double beta2, double eps,
                               double weight_decay, int64_t step) {
  AdamWStep s;
  s.lr = static_cast<float>(lr);
  s.beta1 = static_cast<float>(beta1);
  s.beta2 = static_cast<float>(beta2);
  s.eps = static_cast<float>(eps);
  s.weight_decay = static_cast<float>(weight_decay);
  s.bias_correction1 = static_cast<float>(1.0 - std::pow(beta1, static_cast<double>(step)));
  s.bias_correction2_sqrt =
      static_cast<float>(std::sqrt(1.0 - std::pow(beta2, static_cast<double>(step))));
  return s;
}

// Gradient clipping as torch.nn.utils.clip_grad_norm_: the factor the
// gradients are multiplied by (1 when max_norm is 0 = off, or already within).
inline double ClipCoefficient(double norm, double max_norm) {
  if (max_norm <= 0.0) return 1.0;
  const double coef = max_norm / (norm + 1e-6);
  return coef < 1.0 ? coef : 1.0;
}

}  // namespace hetermoe::math
