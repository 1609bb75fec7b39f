// FP32 reference operators of the CPU engine. The CUDA kernels are tested
// against these, so each states its exact semantics.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/model.h"
#include "engine/thread_pool.h"

namespace m40llm::cpu {

// FP16 bits -> FP32 for n values.
void HalfToFloatRow(const uint16_t* src, float* dst, size_t n);
// FP32 -> FP16 bits (round to nearest even) for n values.
void FloatToHalfRow(const float* src, uint16_t* dst, size_t n);

// sum_i a[i] * b[i] in FP32 (8-wide partial sums where the CPU allows).
float Dot(const float* a, const float* b, size_t n);

// Row r of w as FP32: FP16 widened, or its quantised blocks dequantised.
void WeightRow(const WeightMatrix& w, int64_t r, float* out);

// y (n_tok, w.rows) = x (n_tok, w.cols) * w^T, weights FP16 or quantised
// blocks (dequantised exactly to FP32, as llama.cpp's reference does), all
// math FP32.
// Each output element is one Dot over a row converted to FP32, so a token's
// result does not depend on which other tokens share the call.
void MatMul(ThreadPool& pool, const WeightMatrix& w, const float* x, int64_t n_tok, float* y);

// out = x / sqrt(mean(x^2) + eps) * weight, over n values (sum in double).
void RmsNorm(const float* x, const float* weight, size_t n, float eps, float* out);

// Rotary embedding in place on `n_heads` heads of `head_dim` values for one
// position. The first n_rot dims of each head rotate; pairs are adjacent
// (x[2i], x[2i+1]) in the llama "normal" layout, or (x[i], x[i + n_rot/2]) in
// the NeoX layout. theta_i = pos * freq_scale * base^(-2i/n_rot) / ff[i],
// with ff = freq_factors (n_rot/2 values) or 1.
struct RopeParams {
  int n_rot = 0;
  float freq_base = 10000.0f;
  float freq_scale = 1.0f;
  const float* freq_factors = nullptr;
  bool neox = false;
};
void Rope(float* x, int n_heads, int head_dim, int pos, const RopeParams& p);

// x[i] += bias[i] for i < n.
void AddBias(float* x, const float* bias, size_t n);

// In-place softmax over n values (max-subtracted, FP32).
void Softmax(float* x, size_t n);

// out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)).
void SwiGlu(const float* gate, const float* up, size_t n, float* out);

}  // namespace m40llm::cpu
