// Device side of the embedding gather: what one block of the gather kernel
// does, as a __device__ function that the standalone kernel (embedding.cu)
// and the persistent decode kernel both call. Included only by .cu files
// (see cuda/README.md, "Device functions"); C++17 and sm_52 features only.
#pragma once

#if !defined(__CUDACC__)
#error "cuda/embedding_device.cuh is for CUDA sources only"
#endif

#include <cmath>
#include <cstdint>

#include "cuda/kernel_util.h"

namespace m40llm::gpu::embedding {

// Token t's row: out[t, c] = table[ids[t], c] widened to FP32, for the
// columns c that block `col_block` of n_col_blocks blocks of kBlock threads
// owns in a grid-stride loop over the row. An id outside [0, n_vocab) gives a
// row of NaN.
template <int kBlock>
__device__ __forceinline__ void EmbeddingGatherRow(
    int64_t t, unsigned col_block, unsigned n_col_blocks,
    const uint16_t* __restrict__ table,  // (n_vocab, n_embd) FP16
    int64_t n_vocab, int64_t n_embd,
    const int32_t* __restrict__ ids,  // (n_tok)
    float* __restrict__ out) {        // (n_tok, n_embd) FP32
  const int32_t id = __ldg(ids + t);
  const bool valid = id >= 0 && id < n_vocab;
  const uint16_t* src = table + (valid ? static_cast<int64_t>(id) : 0) * n_embd;
  float* dst = out + t * n_embd;
  for (int64_t c = static_cast<int64_t>(col_block) * kBlock + threadIdx.x; c < n_embd;
       c += static_cast<int64_t>(n_col_blocks) * kBlock) {
    dst[c] = valid ? internal::LoadHalf(src + c) : NAN;
  }
}

}  // namespace m40llm::gpu::embedding
