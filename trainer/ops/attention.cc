// Attention on the CPU: one (sequence, KV head) per parallel task, so that the
// query heads sharing a KV head accumulate dk/dv without races.
#include "trainer/ops/attention.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/shared/math.h"

namespace hetermoe::ops {
namespace {

inline float Dot(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline void Axpy(float alpha, const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// The first key query t sees.
int64_t FirstKey(int64_t t, int64_t window) { return window <= 0 || t < window ? 0 : t - window + 1; }

}  // namespace

void AttentionForward(const AttentionShape& s, const float* q, const float* k, const float* v,
                      float* out, float* lse) {
  const int64_t T = s.seq_len, H = s.heads, KV = s.kv_heads, hd = s.head_dim;
  const int64_t group = H / KV, q_stride = H * hd, kv_stride = KV * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
#pragma omp parallel
  {
    std::vector<float> p(T);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < s.batch; ++b) {
      for (int64_t h = 0; h < H; ++h) {
        const int64_t kvh = h / group;
        for (int64_t t = 0; t < T; ++t) {
          const float* qt = q + (b * T + t) * q_stride + h * hd;
          float mx = -std::numeric_limits<float>::infinity();
          const int64_t first = FirstKey(t, s.window);
          for (int64_t j = first; j <= t; ++j) {
            p[j] = Dot(qt, k + (b * T + j) * kv_stride + kvh * hd, hd) * scale;
            mx = std::max(mx, p[j]);
          }
          float sum = 0.0f;
          for (int64_t j = first; j <= t; ++j) {
            p[j] = std::exp(p[j] - mx);
            sum += p[j];
          }
          float* ot = out + (b * T + t) * q_stride + h * hd;
          std::memset(ot, 0, sizeof(float) * hd);
          const float inv = 1.0f / sum;
          for (int64_t j = first; j <= t; ++j)
            Axpy(p[j] * inv, v + (b * T + j) * kv_stride + kvh * hd, ot, hd);
          lse[(b * H + h) * T + t] = mx + std::log(sum);
        }
      }
    }
  }
}

void AttentionBackward(const AttentionShape& s, const float* q, const float* k, const float* v,
                       const float* out, const float* lse, const float* dout, float* dq,
                       float* dk, float* dv) {
  const int64_t T = s.seq_len, H = s.heads, KV = s.kv_heads, hd = s.head_dim;
  const int64_t group = H / KV, q_stride = H * hd, kv_stride = KV * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int64_t N = s.batch * T;
  std::memset(dq, 0, sizeof(float) * N * q_stride);
  std::memset(dk, 0, sizeof(float) * N * kv_stride);
  std::memset(dv, 0, sizeof(float) * N * kv_stride);
#pragma omp parallel
  {
    std::vector<float> p(T);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < s.batch; ++b) {
      for (int64_t kvh = 0; kvh < KV; ++kvh) {
        for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
          for (int64_t t = 0; t < T; ++t) {
            const int64_t row = (b * T + t) * q_stride + h * hd;
            const float* qt = q + row;
            const float* dot = dout + row;
            const float row_lse = lse[(b * H + h) * T + t];
            // D = dout . out = sum_j p_j (dout . v_j): the softmax-backward shift.
            const float D = Dot(dot, out + row, hd);
            float* dqt = dq + row;
            for (int64_t j = FirstKey(t, s.window); j <= t; ++j) {
              const int64_t kv_row = (b * T + j) * kv_stride + kvh * hd;
              const float pj = std::exp(Dot(qt, k + kv_row, hd) * scale - row_lse);
              const float dp = Dot(dot, v + kv_row, hd);
              const float ds = math::AttentionScoreGrad(pj, dp, D, scale);
              Axpy(ds, k + kv_row, dqt, hd);
              Axpy(ds, qt, dk + kv_row, hd);
              Axpy(pj, dot, dv + kv_row, hd);
            }
          }
        }
      }
    }
  }
}

}  // namespace hetermoe::ops
