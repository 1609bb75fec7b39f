// Elementwise FP32 operators: SwiGLU and the residual add of the
// feed-forward block, and the Q/K/V bias (qwen2).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace m40llm::gpu {

// out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)), for n values
// (cpu::SwiGlu). gate, up, out: (n) FP32, device; out may equal gate or up.
[[nodiscard]] absl::Status LaunchSwiGlu(const float* gate, const float* up, int64_t n, float* out,
                                        cudaStream_t stream);

// The same for a fused gate/up product: row r of gate_up holds the n gate
// values, then the n up values; out[r, i] = silu(gate_up[r, i]) *
// gate_up[r, n + i]. gate_up: (n_rows, 2 n) FP32, out: (n_rows, n) FP32,
// device; out must not alias gate_up.
[[nodiscard]] absl::Status LaunchSwiGluRows(const float* gate_up, int64_t n_rows, int64_t n,
                                            float* out, cudaStream_t stream);

// x[r, c] += bias[c] for r < n_rows, c < n, rows row_stride >= n floats
// apart (cpu::AddBias on each row). x: (n_rows, row_stride) FP32, bias: (n)
// FP32, device.
[[nodiscard]] absl::Status LaunchAddBiasRows(float* x, int64_t n_rows, int64_t n,
                                             int64_t row_stride, const float* bias,
                                             cudaStream_t stream);

// out[i] = a[i] + b[i] for n values (residual add).
// a, b, out: (n) FP32, device; out may equal a or b.
[[nodiscard]] absl::Status LaunchAdd(const float* a, const float* b, int64_t n, float* out,
                                     cudaStream_t stream);

}  // namespace m40llm::gpu
