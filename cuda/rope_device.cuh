// Device side of RoPE: what one block of the rotation kernel does, as a
// __device__ function that the standalone kernel (rope.cu) and the persistent
// decode kernel both call. Included only by .cu files (see cuda/README.md,
// "Device functions"); C++17 and sm_52 features only.
#pragma once

#if !defined(__CUDACC__)
#error "cuda/rope_device.cuh is for CUDA sources only"
#endif

#include <cstdint>

namespace m40llm::gpu::rope {

// Rotates the n_heads heads of token t, by all kBlock threads of the block
// (it contains __syncthreads()). The block first computes the n_rot/2
// (cos, sin) pairs of the token's position into cs, then rotates every head
// with them. The angle is computed in FP64, as in the CPU reference: at
// position 10^5 an FP32 angle is off by ~4e-3 rad. That is n_rot/2
// pow+sincos per token, a negligible cost even at Maxwell's FP64 rate.
// cs: n_rot floats of shared memory, cos in [0, n_rot/2), sin in
// [n_rot/2, n_rot).
template <int kBlock>
__device__ __forceinline__ void RopeToken(
    int64_t t,
    float* __restrict__ x,  // (n_tok, row_stride)
    int n_heads, int head_dim, int64_t row_stride,
    const int32_t* __restrict__ positions,  // (n_tok)
    int n_rot, float freq_base, float freq_scale,
    const float* __restrict__ freq_factors,  // (n_rot / 2) or null
    bool neox, float* cs) {
  const int half = n_rot / 2;
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

}  // namespace m40llm::gpu::rope
