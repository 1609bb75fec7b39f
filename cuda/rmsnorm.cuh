// RMS normalisation of FP32 rows with an FP32 weight vector.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace m40llm::gpu {

// out[r, i] = x[r, i] / sqrt(mean_i(x[r, :]^2) + eps) * weight[i], per row,
// matching cpu::RmsNorm (which sums in double; this sums in FP32).
// x, out: (n_rows, n) FP32, device; out may equal x (in place).
// weight: (n) FP32, device. One block per row.
[[nodiscard]] absl::Status LaunchRmsNorm(const float* x, const float* weight, int64_t n_rows,
                                         int64_t n, float eps, float* out, cudaStream_t stream);

// The residual add fused into the norm: x[r, i] += residual[r, i], then out =
// RMSNorm(x) as LaunchRmsNorm computes it, bit for bit the same as
// LaunchAdd followed by LaunchRmsNorm. x: (n_rows, n) FP32, device, updated
// in place; residual: (n_rows, n) FP32, device; out: (n_rows, n), which must
// not alias x or residual.
[[nodiscard]] absl::Status LaunchAddRmsNorm(float* x, const float* residual, const float* weight,
                                            int64_t n_rows, int64_t n, float eps, float* out,
                                            cudaStream_t stream);

}  // namespace m40llm::gpu
