// Device side of the elementwise operators (SwiGLU, the residual add, the
// Q/K/V bias): each
// kernel's grid-stride loop as a __device__ function over one block's share
// of the elements, which the standalone kernels (elementwise.cu) and the
// persistent decode kernel both call. Included only by .cu files (see
// cuda/README.md, "Device functions"); C++17 and sm_52 features only.
//
// Pointers are not __restrict__: the outputs may alias an input, and each
// thread reads an element before it writes the same element.
#pragma once

#if !defined(__CUDACC__)
#error "cuda/elementwise_device.cuh is for CUDA sources only"
#endif

#include <cstdint>

namespace m40llm::gpu::elementwise {

// silu(g) * u; expf (not __expf): full-precision exponential, as the CPU
// reference.
__device__ __forceinline__ float SwiGlu(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// out[i] = SwiGlu(gate[i], up[i]) for the elements i that block `block` of
// n_blocks blocks of kBlock threads owns in a grid-stride loop.
template <int kBlock>
__device__ __forceinline__ void SwiGluStrided(unsigned block, unsigned n_blocks, const float* gate,
                                              const float* up, int64_t n,
                                              float* out) {  // all (n)
  for (int64_t i = static_cast<int64_t>(block) * kBlock + threadIdx.x; i < n;
       i += static_cast<int64_t>(n_blocks) * kBlock) {
    out[i] = SwiGlu(gate[i], up[i]);
  }
}

// The fused gate/up form: out[r, c] = SwiGlu(gate_up[r, c], gate_up[r, n + c])
// for the flat indices i = r * n + c that the block owns, as above.
template <int kBlock>
__device__ __forceinline__ void SwiGluRowsStrided(
    unsigned block, unsigned n_blocks,
    const float* gate_up,  // (n_rows, 2 n): gate then up, per row
    int64_t n_rows, int64_t n,
    float* out) {  // (n_rows, n)
  const int64_t total = n_rows * n;
  for (int64_t i = static_cast<int64_t>(block) * kBlock + threadIdx.x; i < total;
       i += static_cast<int64_t>(n_blocks) * kBlock) {
    const int64_t r = i / n;
    const int64_t c = i - r * n;
    const float* row = gate_up + r * 2 * n;
    out[i] = SwiGlu(row[c], row[n + c]);
  }
}

// x[r, c] += bias[c] for the flat indices i = r * n + c that the block owns,
// as above, rows `row_stride` floats apart (a bias over rows of Q/K/V).
template <int kBlock>
__device__ __forceinline__ void AddBiasRowsStrided(unsigned block, unsigned n_blocks,
                                                   float* x,  // (n_rows, row_stride)
                                                   int64_t n_rows, int64_t n, int64_t row_stride,
                                                   const float* bias) {  // (n)
  const int64_t total = n_rows * n;
  for (int64_t i = static_cast<int64_t>(block) * kBlock + threadIdx.x; i < total;
       i += static_cast<int64_t>(n_blocks) * kBlock) {
    const int64_t r = i / n;
    const int64_t c = i - r * n;
    x[r * row_stride + c] += bias[c];
  }
}

// out[i] = a[i] + b[i] for the elements the block owns, as above.
template <int kBlock>
__device__ __forceinline__ void AddStrided(unsigned block, unsigned n_blocks, const float* a,
                                           const float* b, int64_t n, float* out) {  // all (n)
  for (int64_t i = static_cast<int64_t>(block) * kBlock + threadIdx.x; i < n;
       i += static_cast<int64_t>(n_blocks) * kBlock) {
    out[i] = a[i] + b[i];
  }
}

}  // namespace m40llm::gpu::elementwise
