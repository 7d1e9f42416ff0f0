#include "trainer/ops/rope.h"

#include <cmath>

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
