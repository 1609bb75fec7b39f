// Decode attention over the FP16 KV cache: one query token per sequence,
// causal by construction (a sequence attends to the positions it has filled).
//
// Cache layout as in kv_cache.cuh: one layer's KvCacheLayer,
// (max_slots, n_head_kv, ctx_per_slot, head_dim) FP16 bits.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "cuda/kv_cache.cuh"

namespace m40llm::gpu {

// head_dim must be a multiple of this, in [kAttentionHeadDimAlign,
// kAttentionMaxHeadDim]: each lane reads 8 halves (16 bytes) of a K or V row.
inline constexpr int kAttentionHeadDimAlign = 8;
inline constexpr int kAttentionMaxHeadDim = 256;

// Bytes of scratch LaunchDecodeAttention can use for the split-sequence path,
// for calls with up to max_seqs sequences of this model shape and cache. Zero
// when no context that long is ever split; allocate once and pass it to every
// call. A smaller (or null) workspace still works: long contexts then get
// fewer splits, down to one pass per (sequence, head) with no scratch.
size_t DecodeAttentionWorkspaceBytes(int max_seqs, int n_head, int head_dim, int ctx_per_slot);

// Arguments of LaunchDecodeAttention.
struct DecodeAttentionArgs {
  // (n_seq, n_head, head_dim) FP32, device (rows q_row_stride apart).
  const float* q = nullptr;
  int n_seq = 0;
  int n_head = 0;
  // (n_seq) int32, device. Lengths count positions already appended (length
  // = position of the query token + 1). These are not readable here: a
  // sequence whose slot is outside [0, max_slots) or whose length is outside
  // [1, max_len] gets NaN outputs, and nothing outside its slot's filled
  // positions is read.
  const int32_t* slots = nullptr;
  const int32_t* lengths = nullptr;
  // A host-side upper bound of the lengths, 1 <= max_len <= ctx_per_slot; it
  // decides how finely long contexts are split across blocks.
  int max_len = 0;
  KvCacheLayer cache;  // k and v 16-byte aligned
  // workspace_bytes of device scratch (4-byte aligned), or null/0.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // (n_seq, n_head, head_dim) FP32, device; must not alias q or workspace.
  float* out = nullptr;
  // 0 plans the splits for speed from the whole call (n_seq, max_len, the
  // device), so a sequence's result can change in the last bits with what
  // else is in the batch. A positive value (from DecodeAttentionFixedSplitLen)
  // cuts every context into pieces of exactly that many positions, so each
  // sequence's output depends only on its own data: batch-invariant decoding.
  // The workspace must then hold the splits of max_len
  // (DecodeAttentionWorkspaceBytes covers it).
  int fixed_split_len = 0;
  // Floats from one sequence's q row to the next; 0 means n_head * head_dim
  // (packed). A larger stride reads Q inside a fused QKV row.
  int64_t q_row_stride = 0;
};

// out[s, h, :] = softmax_j(q[s, h, :] . K[j, :] / sqrt(head_dim)) V[j, :] over
// the positions j in [0, lengths[s]) of slot slots[s], with K and V the rows
// of kv head h / (n_head / n_head_kv) (grouped-query attention; MQA and MHA
// are the n_head_kv == 1 and == n_head cases). Scores, softmax and sums in
// FP32; K and V are widened from FP16 exactly, as the CPU engine reads them.
// DecodeAttentionArgs gives the shapes.
//
// Constraints: n_head a multiple of n_head_kv; head_dim a multiple of 8 in
// [8, 256]; n_seq <= 65535.
//
// Prefill (many query tokens of one sequence, causal): once the chunk's K and
// V are appended, pass each query token as its own entry with its slot and
// length position + 1. That is exact causal attention, but it reads the
// sequence's K and V once per query token (through L2), not once per tile.
[[nodiscard]] absl::Status LaunchDecodeAttention(const DecodeAttentionArgs& args,
                                                 cudaStream_t stream);

// The split length for batch-invariant calls on a cache of ctx_per_slot
// positions: the shortest whole number of tiles, at least the minimum split,
// that cuts any context into at most the merge kernel's split limit.
int DecodeAttentionFixedSplitLen(int ctx_per_slot);

}  // namespace m40llm::gpu
