// Scalar math shared by the CPU backend (trainer/ops) and the CUDA kernels.
//
// Every function here is the single definition of an element-wise formula:
// the CPU ops call it in their loops and the CUDA kernels call it per thread,
// so the CPU tests (checked against PyTorch) exercise the very code the GPU
// runs. Keep these free of memory access and side effects.
#pragma once

#include <cmath>

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

}  // namespace hetermoe::math
