// Embedding gather kernel and launcher (see embedding.cuh).
#include "cuda/cuda_check.h"
#include "cuda/embedding.cuh"
#include "cuda/embedding_device.cuh"
#include "cuda/kernel_util.h"

namespace m40llm::gpu {
namespace {

// grid.x strides over the n_embd columns, grid.y over the tokens.
template <int kBlock>
__global__ void __launch_bounds__(kBlock)
    EmbeddingGatherKernel(const uint16_t* __restrict__ table,  // (n_vocab, n_embd) FP16
                          int64_t n_vocab, int64_t n_embd,
                          const int32_t* __restrict__ ids,  // (n_tok)
                          int64_t n_tok,
                          float* __restrict__ out) {  // (n_tok, n_embd) FP32
  for (int64_t t = blockIdx.y; t < n_tok; t += gridDim.y) {
    embedding::EmbeddingGatherRow<kBlock>(t, blockIdx.x, gridDim.x, table, n_vocab, n_embd, ids,
                                          out);
  }
}

}  // namespace

absl::Status LaunchEmbeddingGather(const uint16_t* table, int64_t n_vocab, int64_t n_embd,
                                   const int32_t* ids, int64_t n_tok, float* out,
                                   cudaStream_t stream) {
  if (n_vocab < 0 || n_embd < 0 || n_tok < 0) {
    return absl::InvalidArgumentError("LaunchEmbeddingGather: negative size");
  }
  if (n_embd == 0 || n_tok == 0) return absl::OkStatus();
  if (table == nullptr || ids == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("LaunchEmbeddingGather: null pointer");
  }
  constexpr int kBlock = 256;
  const dim3 grid(internal::GridStrideBlocks(n_embd, kBlock, 1024),
                  static_cast<unsigned int>(n_tok < 65535 ? n_tok : 65535));
  EmbeddingGatherKernel<kBlock>
      <<<grid, kBlock, 0, stream>>>(table, n_vocab, n_embd, ids, n_tok, out);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace m40llm::gpu
