// RoPE kernel and launcher (see rope.cuh).
#include <climits>

#include "cuda/cuda_check.h"
#include "cuda/kernel_util.h"
#include "cuda/rope.cuh"
#include "cuda/rope_device.cuh"

namespace m40llm::gpu {
namespace {

// One block per token (rope_device.cuh).
template <int kBlock>
__global__ void __launch_bounds__(kBlock)
    RopeKernel(float* __restrict__ x,  // (n_tok, row_stride)
               int n_heads, int head_dim, int64_t row_stride,
               const int32_t* __restrict__ positions,  // (n_tok)
               int n_rot, float freq_base, float freq_scale,
               const float* __restrict__ freq_factors,  // (n_rot / 2) or null
               bool neox) {
  extern __shared__ float cs[];  // cos in [0, half), sin in [half, 2 * half)
  rope::RopeToken<kBlock>(blockIdx.x, x, n_heads, head_dim, row_stride, positions, n_rot, freq_base,
                          freq_scale, freq_factors, neox, cs);
}

}  // namespace

absl::Status LaunchRope(float* x, int64_t n_tok, int n_heads, int head_dim, int64_t row_stride,
                        const int32_t* positions, const RopeConfig& config, cudaStream_t stream) {
  if (n_tok < 0 || n_heads < 0 || head_dim < 0) {
    return absl::InvalidArgumentError("LaunchRope: negative size");
  }
  if (config.n_rot < 0 || config.n_rot % 2 != 0 || config.n_rot > head_dim) {
    return absl::InvalidArgumentError("LaunchRope: n_rot must be even and in [0, head_dim]");
  }
  if (row_stride < static_cast<int64_t>(n_heads) * head_dim) {
    return absl::InvalidArgumentError("LaunchRope: row_stride < n_heads * head_dim");
  }
  if (n_tok > INT_MAX || static_cast<int64_t>(n_heads) * (config.n_rot / 2) > INT_MAX) {
    return absl::InvalidArgumentError("LaunchRope: too large");
  }
  if (n_tok == 0 || n_heads == 0 || config.n_rot == 0) return absl::OkStatus();
  if (x == nullptr || positions == nullptr) {
    return absl::InvalidArgumentError("LaunchRope: null pointer");
  }
  constexpr int kBlock = 128;
  const size_t smem = sizeof(float) * static_cast<size_t>(config.n_rot);
  if (smem > 48 * 1024) return absl::InvalidArgumentError("LaunchRope: n_rot too large");
  RopeKernel<kBlock><<<static_cast<unsigned int>(n_tok), kBlock, smem, stream>>>(
      x, n_heads, head_dim, row_stride, positions, config.n_rot, config.freq_base,
      config.freq_scale, config.freq_factors, config.neox);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace m40llm::gpu
