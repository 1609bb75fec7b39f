// Causal prefill attention over the FP16 KV cache: chunks of consecutive
// query tokens, each attending to every earlier position of its sequence.
//
// Cache layout as in kv_cache.cuh: one layer's KvCacheLayer,
// (max_slots, n_head_kv, ctx_per_slot, head_dim) FP16 bits. The engine
// appends a chunk's K and V (LaunchKvAppend) before this runs, so a chunk's
// own positions are read from the cache like the earlier ones.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "cuda/kv_cache.cuh"

namespace m40llm::gpu {

// Arguments of LaunchPrefillAttention.
struct PrefillAttentionArgs {
  const float* q = nullptr;  // (n_tok, n_head, head_dim) FP32, device, 16-byte aligned
  int64_t n_tok = 0;
  int n_head = 0;
  // (n_chunks) int32 each, device. Not readable here, so checked on the
  // device: a chunk whose slot is outside [0, max_slots), whose pos is
  // negative, whose len exceeds max_chunk_len, or whose pos + len exceeds
  // min(ctx_per_slot, max_context) gets NaN in all its output rows, and
  // nothing outside its slot's positions [0, pos + len) is read. A chunk whose
  // rows are not inside [0, n_tok) (negative row or len, row + len > n_tok)
  // names no rows it could own: it reads and writes nothing. Chunks must not
  // share output rows.
  const int32_t* chunk_slot = nullptr;
  const int32_t* chunk_pos = nullptr;
  const int32_t* chunk_len = nullptr;
  const int32_t* chunk_row = nullptr;
  // Host-side bounds for the grid: max_chunk_len >= every len (the grid
  // covers that many tokens per chunk), 1 <= max_context <= ctx_per_slot and
  // >= every pos + len.
  int n_chunks = 0;
  int max_chunk_len = 0;
  int max_context = 0;
  KvCacheLayer cache;  // k and v 16-byte aligned
  // (n_tok, n_head, head_dim) FP32, device, 16-byte aligned; must not alias q.
  float* out = nullptr;
};

// Chunk c: query rows [row[c], row[c] + len[c]) of q and out are the tokens
// of slot slot[c] at positions pos[c] .. pos[c] + len[c] - 1; token i of the
// chunk attends to positions [0, pos[c] + i] of its slot (positions before
// pos[c] come from earlier calls: chunked prefill, prompt caching). For each
// query head h, with kv head h / (n_head / n_head_kv) (GQA; MQA and MHA are
// n_head_kv == 1 and == n_head):
//   out[r, h, :] = softmax_j(q[r, h, :] . K[j, :] / sqrt(head_dim)) V[j, :].
// Scores, softmax and sums in FP32; K and V widened from FP16 exactly, as the
// CPU engine reads them. Rows of q/out that no chunk names are not written.
// PrefillAttentionArgs gives the shapes.
//
// Constraints: n_head a multiple of n_head_kv; head_dim a multiple of 8 in
// [8, 256] (64 and 128 have their own kernels; others run on the next of
// 32/64/128/256 with zero-padded dims); n_chunks <= 65535.
//
// One block serves a tile of query tokens of one chunk for the query heads of
// one kv head (all of them where they fit), so a K/V tile staged in shared
// memory serves every query row of the block: the cache is read once per
// query tile, not once per query token as LaunchDecodeAttention with one
// entry per token reads it. The keys of a block are not split across blocks:
// a short chunk far into a long context (decode-like) is faster through
// LaunchDecodeAttention, which splits long contexts.
[[nodiscard]] absl::Status LaunchPrefillAttention(const PrefillAttentionArgs& args,
                                                  cudaStream_t stream);

}  // namespace m40llm::gpu
