// CPU operators: scalar code everywhere, with an AVX2/FMA dot product chosen
// at run time (FP16 conversion dispatches likewise inside engine/fp16.cc).
#include "engine/cpu_ops.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "engine/dequant.h"
#include "engine/fp16.h"

namespace m40llm::cpu {
namespace {

bool HasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

__attribute__((target("avx2,fma"))) float DotAvx2(const float* a, const float* b,
                                                       size_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
    acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
  }
  for (; i + 8 <= n; i += 8) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  }
  __m256 acc = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  float r = _mm_cvtss_f32(s);
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

float DotScalar(const float* a, const float* b, size_t n) {
  float acc[8] = {};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  }
  float r = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

}  // namespace

void HalfToFloatRow(const uint16_t* src, float* dst, size_t n) { HalfToFloatN(src, dst, n); }

void FloatToHalfRow(const float* src, uint16_t* dst, size_t n) { FloatToHalfN(src, dst, n); }

float Dot(const float* a, const float* b, size_t n) {
  return HasAvx2() ? DotAvx2(a, b, n) : DotScalar(a, b, n);
}

// Rows [r0, r0 + n) of w into FP32 `out` (n * cols values).
void WeightRows(const WeightMatrix& w, size_t r0, size_t n, float* out) {
  const size_t cols = static_cast<size_t>(w.cols);
  if (!w.quantised()) {
    HalfToFloatRow(w.data.data() + r0 * cols, out, n * cols);
    return;
  }
  // The blocks were checked at load; a failure here is a programming error.
  const absl::Status s = DequantizeToF32(w.type, w.blocks.data() + r0 * w.row_bytes, n * cols, out);
  if (!s.ok()) std::abort();
}

void WeightRow(const WeightMatrix& w, int64_t r, float* out) {
  WeightRows(w, static_cast<size_t>(r), 1, out);
}

void MatMul(ThreadPool& pool, const WeightMatrix& w, const float* x, int64_t n_tok, float* y) {
  const size_t cols = static_cast<size_t>(w.cols);
  const size_t rows = static_cast<size_t>(w.rows);
  // Rows are converted to FP32 in small groups and reused across a block of
  // tokens, so the FP16 weights stream from memory once per token block.
  constexpr size_t kRowGroup = 8;
  constexpr int64_t kTokBlock = 32;
  pool.ParallelFor((rows + kRowGroup - 1) / kRowGroup, 4, [&](size_t g0, size_t g1) {
    std::vector<float> wf(kRowGroup * cols);
    for (size_t g = g0; g < g1; ++g) {
      const size_t r0 = g * kRowGroup;
      const size_t nr = std::min(kRowGroup, rows - r0);
      WeightRows(w, r0, nr, wf.data());
      for (int64_t t0 = 0; t0 < n_tok; t0 += kTokBlock) {
        const int64_t t1 = std::min(n_tok, t0 + kTokBlock);
        for (int64_t t = t0; t < t1; ++t) {
          const float* xt = x + t * cols;
          float* yt = y + t * rows;
          for (size_t r = 0; r < nr; ++r) yt[r0 + r] = Dot(wf.data() + r * cols, xt, cols);
        }
      }
    }
  });
}

void RmsNorm(const float* x, const float* weight, size_t n, float eps, float* out) {
  double ss = 0;
  for (size_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float scale = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(n)) + eps);
  for (size_t i = 0; i < n; ++i) out[i] = x[i] * scale * weight[i];
}

void Rope(float* x, int n_heads, int head_dim, int pos, const RopeParams& p) {
  const int half = p.n_rot / 2;
  for (int i = 0; i < half; ++i) {
    double theta = static_cast<double>(pos) * p.freq_scale *
                   std::pow(static_cast<double>(p.freq_base), -2.0 * i / p.n_rot);
    if (p.freq_factors != nullptr) theta /= p.freq_factors[i];
    const float c = static_cast<float>(std::cos(theta));
    const float s = static_cast<float>(std::sin(theta));
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + static_cast<size_t>(h) * head_dim;
      const int a = p.neox ? i : 2 * i;
      const int b = p.neox ? i + half : 2 * i + 1;
      const float x0 = v[a], x1 = v[b];
      v[a] = x0 * c - x1 * s;
      v[b] = x0 * s + x1 * c;
    }
  }
}

void AddBias(float* x, const float* bias, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] += bias[i];
}

void Softmax(float* x, size_t n) {
  float mx = -INFINITY;
  for (size_t i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  float sum = 0;
  for (size_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
  for (size_t i = 0; i < n; ++i) x[i] *= inv;
}

void SwiGlu(const float* gate, const float* up, size_t n, float* out) {
  for (size_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace m40llm::cpu
