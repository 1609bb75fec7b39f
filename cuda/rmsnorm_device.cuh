// Device side of RMSNorm (and the residual add fused into it): what one
// block of the norm kernel does, as a __device__ function that the standalone
// kernel (rmsnorm.cu) and the persistent decode kernel both call. Included
// only by .cu files (see cuda/README.md, "Device functions"); C++17 and sm_52
// features only.
#pragma once

#if !defined(__CUDACC__)
#error "cuda/rmsnorm_device.cuh is for CUDA sources only"
#endif

#include <cstdint>

#include "cuda/kernel_util.h"

namespace m40llm::gpu::rmsnorm {

// Row `row` of out = RMSNorm(x) * weight, by all kBlock threads of the block
// (it contains __syncthreads()). x and out may alias: every read of the first
// pass happens before the barrier inside BlockSum, and the second pass reads
// and writes the same element in the same thread. With kAdd the first pass
// also adds the residual into x (x[i] += residual[i]); the second pass reads
// back what the same thread wrote, so the result is bit-identical to an add
// followed by the plain norm. scratch: kBlock / 32 floats of shared memory.
template <int kBlock, bool kAdd>
__device__ __forceinline__ void RmsNormRow(int64_t row,
                                           float* x,                          // (n_rows, n)
                                           const float* residual,             // (n_rows, n)
                                           const float* __restrict__ weight,  // (n)
                                           int64_t n, float eps,
                                           float* out,  // (n_rows, n)
                                           float* scratch) {
  float* xr = x + row * n;
  float* yr = out + row * n;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += kBlock) {
    float v = xr[i];
    if constexpr (kAdd) {
      v = v + residual[row * n + i];
      xr[i] = v;
    }
    ss = fmaf(v, v, ss);
  }
  ss = internal::BlockSum<kBlock>(ss, scratch);
  const float scale = 1.0f / sqrtf(ss / static_cast<float>(n) + eps);
  for (int64_t i = threadIdx.x; i < n; i += kBlock) {
    yr[i] = xr[i] * scale * __ldg(weight + i);
  }
}

}  // namespace m40llm::gpu::rmsnorm
