// The launches of one forward pass over a piece of a batch (at most
// max_tokens_per_pass tokens), in order, on one stream: the embedding gather;
// per layer the layer step (RMSNorm, Q/K/V products, RoPE, KV append,
// attention, output product, RMSNorm with the residual add, gate/up products,
// SwiGLU, down product); the final norm and the LM head. Nothing here
// synchronises, so a decode step can be captured as a CUDA graph
// (graph_cache.h). Host code.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "cuda/device_model.h"
#include "cuda/pass_context.h"
#include "engine/model.h"

namespace m40llm::gpu {

// Which product kernel a pass uses. Each keeps a token's output row
// independent of the other tokens in the call, and the choice depends only
// on the kind of pass, never on its size, so a sequence's numbers do not
// change with what it is batched with:
//   kDecode: the skinny kernel, in groups of at most kMatMulSkinnyMaxTokens
//            tokens (its bit-identical range), for decode steps and the LM head;
//   kPrefill: the tiled GEMM, for passes that carry a prompt chunk.
enum class Product { kDecode, kPrefill };

// y (n_tok, m.rows) = x (n_tok, m.cols) m^T with the kernel `kind` names.
absl::Status MatMul(Product kind, const DeviceMatrix& m, const float* x, int64_t n_tok, float* y,
                    cudaStream_t s);

// A piece's inputs as staged on the device (PassContext::ints): token t is
// tok[t] of slot slot[t] at position pos[t], with len[t] = pos[t] + 1; the
// chunks are the runs of consecutive positions of one slot, for the prefill
// attention kernel.
struct PieceInputs {
  int64_t n = 0;                    // tokens
  const int32_t* tok = nullptr;     // (n) int32, device
  const int32_t* slot = nullptr;    // (n) int32, device
  const int32_t* pos = nullptr;     // (n) int32, device
  const int32_t* len = nullptr;     // (n) int32, device
  const int32_t* chunks = nullptr;  // (4, n) int32, device: slot, first position, length, first
                                    // row of chunk i at i, n + i, 2 n + i, 3 n + i
  int n_chunks = 0;
  int max_chunk = 0;    // tokens of the longest chunk
  int max_context = 0;  // the longest context: the largest position + 1

  // Decode steps (every chunk one token) take the split-K decode kernel,
  // which spreads long contexts over blocks; prompts take the tiled causal
  // kernel, which reads each K/V tile once per query tile.
  bool prefill_attention() const { return max_chunk > 1; }
};

// Enqueues the embedding gather and every layer for `piece` on `st`,
// leaving the residual stream after the last layer in p.x (n, n_embd).
// attn_max_len bounds the decode attention kernel's splits: the piece's
// longest context when run directly, the slot size in a captured step (a
// fixed grid). With the fixed split length a sequence's result does not
// depend on it either way.
absl::Status EnqueueLayers(const ModelConfig& c, const DeviceModel& m, const PieceInputs& piece,
                           int attn_max_len, PassContext& p, cudaStream_t st);

// The final norm and the LM head for `rows` (<= kLogitRows) rows of x
// (rows, n_embd), device, contiguous: logits (rows, n_vocab) into p.logits,
// through p.h.
absl::Status EnqueueLmHead(const ModelConfig& c, const DeviceModel& m, const float* x, int64_t rows,
                           PassContext& p, cudaStream_t st);

}  // namespace m40llm::gpu
