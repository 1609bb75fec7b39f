// Rotary position embedding, in place on FP32 query/key rows.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace m40llm::gpu {

// Rotation settings, as cpu::RopeParams but with a device pointer for the
// frequency factors. theta_i = pos * freq_scale * freq_base^(-2i/n_rot) / ff[i].
struct RopeConfig {
  int n_rot = 0;  // rotated dims per head: even, <= head_dim
  float freq_base = 10000.0f;
  float freq_scale = 1.0f;
  const float* freq_factors = nullptr;  // (n_rot / 2) FP32, device; or null for 1
  bool neox = false;                    // pairs (x[i], x[i + n_rot/2]) instead of (x[2i], x[2i+1])
};

// Rotates, for each token t, the n_heads heads of head_dim values starting at
// x + t * row_stride, at position positions[t] (cpu::Rope per token). Dims at
// or past n_rot in each head are left unchanged.
// x: (n_tok, row_stride) FP32, device, row_stride >= n_heads * head_dim (a
//    larger stride lets Q or K be rotated inside a fused QKV row).
// positions: (n_tok) int32, device.
[[nodiscard]] absl::Status LaunchRope(float* x, int64_t n_tok, int n_heads, int head_dim,
                                      int64_t row_stride, const int32_t* positions,
                                      const RopeConfig& config, cudaStream_t stream);

}  // namespace m40llm::gpu
