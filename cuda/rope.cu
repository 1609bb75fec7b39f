// RoPE kernel and launcher (see rope.cuh).
#include <climits>

#include "cuda/cuda_check.h"
#include "cuda/kernel_util.h"
#include "cuda/rope.cuh"

namespace m40llm::gpu {
namespace {

// One block per token. The block first computes the n_rot/2 (cos, sin) pairs
// of its position into shared memory, then rotates every head with them.
// The angle is computed in FP64, as in the CPU reference: at position 10^5 an
// FP32 angle is off by ~4e-3 rad. That is n_rot/2 pow+sincos per token, a
// negligible cost even at Maxwell's FP64 rate.
template <int kBlock>
__global__ void __launch_bounds__(kBlock)
    RopeKernel(float* __restrict__ x,  // (n_tok, row_stride)
               int n_heads, int head_dim, int64_t row_stride,
               const int32_t* __restrict__ positions,  // (n_tok)
               int n_rot, float freq_base, float freq_scale,
               const float* __restrict__ freq_factors,  // (n_rot / 2) or null
               bool neox) {
  extern __shared__ float cs[];  // cos in [0, half), sin in [half, 2 * half)
  const int half = n_rot / 2;
  const int64_t t = blockIdx.x;
  const double pos = static_cast<double>(__ldg(positions + t));
  for (int i = threadIdx.x; i < half; i += kBlock) {
    double theta = pos * static_cast<double>(freq_scale) *
                   pow(static_cast<double>(freq_base), -2.0 * i / n_rot);
    if (freq_factors != nullptr) theta /= static_cast<double>(__ldg(freq_factors + i));
    double s, c;
    sincos(theta, &s, &c);
    cs[i] = static_cast<float>(c);
    cs[half + i] = static_cast<float>(s);
  }
  __syncthreads();
  float* row = x + t * row_stride;
  const int n_pairs = n_heads * half;
  for (int j = threadIdx.x; j < n_pairs; j += kBlock) {
    const int h = j / half;
    const int i = j - h * half;
    float* v = row + static_cast<int64_t>(h) * head_dim;
    const int a = neox ? i : 2 * i;
    const int b = neox ? i + half : 2 * i + 1;
    const float c = cs[i], s = cs[half + i];
    const float x0 = v[a], x1 = v[b];
    v[a] = x0 * c - x1 * s;
    v[b] = x0 * s + x1 * c;
  }
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
