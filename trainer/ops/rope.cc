#include "trainer/ops/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "kernels/shared/math.h"

namespace hetermoe::ops {

RopeTable MakeRopeTable(int64_t seq_len, int64_t head_dim, float theta) {
  RopeTable t;
  t.seq_len = seq_len;
  t.half = head_dim / 2;
  t.cos.resize(seq_len * t.half);
  t.sin.resize(seq_len * t.half);
  for (int64_t p = 0; p < seq_len; ++p) {
    for (int64_t i = 0; i < t.half; ++i) {
      // Angle in fp32, as HF forms it (position times inverse frequency).
      const float angle = static_cast<float>(p) *
                          math::RopeInvFreq(static_cast<int>(i), static_cast<int>(head_dim), theta);
      t.cos[p * t.half + i] = std::cos(angle);
      t.sin[p * t.half + i] = std::sin(angle);
    }
  }
  return t;
}

std::vector<float> RopeInverseFrequencies(int64_t seq_len, const io::MixtralConfig& config, float* attention_factor) {
  const int hd = static_cast<int>(config.HeadDim());
  const int64_t half = hd / 2;
  const io::RopeScaling& s = config.rope_scaling;
  float theta = static_cast<float>(config.rope_theta);
  *attention_factor = 1.0f;
  if (s.type == "dynamic") {
    const double P = static_cast<double>(config.max_position_embeddings);
    const double S = std::max(static_cast<double>(seq_len), P);
    theta = static_cast<float>(config.rope_theta * std::pow(s.factor * S / P - (s.factor - 1), hd / (hd - 2.0)));
  }
  std::vector<float> inv(half);
  for (int64_t i = 0; i < half; ++i) inv[i] = math::RopeInvFreq(static_cast<int>(i), hd, theta);
  if (s.type == "linear") {
    for (float& f : inv) f /= static_cast<float>(s.factor);
  } else if (s.type == "yarn") {
    const double original = static_cast<double>(
        s.original_max_position_embeddings > 0 ? s.original_max_position_embeddings : config.max_position_embeddings);
    // The dim whose frequency makes `rotations` turns over the original context.
    auto correction_dim = [&](double rotations) {
      return hd * std::log(original / (rotations * 2 * std::numbers::pi)) / (2 * std::log(config.rope_theta));
    };
    const double low = std::max(std::floor(correction_dim(s.beta_fast)), 0.0);
    double high = std::min(std::ceil(correction_dim(s.beta_slow)), hd - 1.0);
    if (low == high) high += 0.001;
    const float factor = static_cast<float>(s.factor);
    for (int64_t i = 0; i < half; ++i) {
      const float pos_freq = powf(theta, static_cast<float>(2 * i) / static_cast<float>(hd));  // theta^(2i/hd)
      const float extrapolation = 1.0f / pos_freq, interpolation = 1.0f / (factor * pos_freq);
      const float ramp = std::clamp(static_cast<float>((static_cast<float>(i) - low) / (high - low)), 0.0f, 1.0f);
      const float keep = 1.0f - ramp;  // the share of the original (extrapolated) frequency
      inv[i] = interpolation * (1.0f - keep) + extrapolation * keep;
    }
    *attention_factor = s.attention_factor > 0 ? static_cast<float>(s.attention_factor)
                                               : static_cast<float>(0.1 * std::log(s.factor) + 1.0);
  }
  return inv;
}

RopeTable MakeRopeTable(int64_t seq_len, const io::MixtralConfig& config) {
  float attention_factor = 1.0f;
  const std::vector<float> inv = RopeInverseFrequencies(seq_len, config, &attention_factor);
  RopeTable t;
  t.seq_len = seq_len;
  t.half = static_cast<int64_t>(inv.size());
  t.cos.resize(seq_len * t.half);
  t.sin.resize(seq_len * t.half);
  for (int64_t p = 0; p < seq_len; ++p)
    for (int64_t i = 0; i < t.half; ++i) {
      const float angle = static_cast<float>(p) * inv[i];
      t.cos[p * t.half + i] = std::cos(angle) * attention_factor;
      t.sin[p * t.half + i] = std::sin(angle) * attention_factor;
    }
  return t;
}

void RopeApply(const RopeTable& table, int64_t tokens, int64_t heads, float* x, bool inverse) {
  const int64_t half = table.half, hd = 2 * half;
  const float sign = inverse ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < tokens; ++n) {
    const int64_t pos = n % table.seq_len;
    const float* c = table.cos.data() + pos * half;
    const float* s = table.sin.data() + pos * half;
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + (n * heads + h) * hd;
      for (int64_t i = 0; i < half; ++i) math::RopeRotate(v[i], v[i + half], c[i], sign * s[i]);
    }
  }
}

}  // namespace hetermoe::ops
