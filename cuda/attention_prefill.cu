// Causal prefill attention kernel and launcher (see attention_prefill.cuh).
//
// The kernel is a thin wrapper over attention_prefill_device.cuh, which
// describes the work split and what a block does.
#include <climits>
#include <cmath>
#include <cstdint>

#include "cuda/attention_prefill.cuh"
#include "cuda/attention_prefill_device.cuh"
#include "cuda/cuda_check.h"

namespace m40llm::gpu {
namespace {

using attention_prefill::kThreads;
using attention_prefill::PrefillConfig;

constexpr int kMinHeadDim = 8;
constexpr int kMaxHeadDim = 256;

// Grid (token tiles, kv heads x head tiles, chunks); grid x runs from the
// last token tile to the first, so the longest blocks start first.
template <int kD>
__global__ void __launch_bounds__(kThreads, 2)
    PrefillAttentionKernel(const float* __restrict__ q,             // (n_tok, n_head, head_dim)
                           const int32_t* __restrict__ chunk_slot,  // (n_chunks)
                           const int32_t* __restrict__ chunk_pos,   // (n_chunks)
                           const int32_t* __restrict__ chunk_len,   // (n_chunks)
                           const int32_t* __restrict__ chunk_row,   // (n_chunks)
                           const uint16_t* __restrict__ k_cache,    // (slots, n_head_kv, ctx, hd)
                           const uint16_t* __restrict__ v_cache,    // (slots, n_head_kv, ctx, hd)
                           int64_t n_tok, int n_head, int n_head_kv, int head_dim, int group,
                           int hq, int tq, int head_tiles, int max_chunk_len, int max_context,
                           int max_slots, int ctx_per_slot, float q_scale,
                           float* __restrict__ out) {  // (n_tok, n_head, head_dim)
  __shared__ attention_prefill::PrefillAttentionShared<kD> shared;
  attention_prefill::PrefillAttentionBlock<kD>(
      static_cast<int>(gridDim.x - 1 - blockIdx.x), static_cast<int>(blockIdx.y), blockIdx.z, q,
      chunk_slot, chunk_pos, chunk_len, chunk_row, k_cache, v_cache, n_tok, n_head, n_head_kv,
      head_dim, group, hq, tq, head_tiles, max_chunk_len, max_context, max_slots, ctx_per_slot,
      q_scale, out, shared);
}

template <int kD>
absl::Status Launch(const PrefillAttentionArgs& a, cudaStream_t stream) {
  const KvCacheLayer& cache = a.cache;
  constexpr int kM = PrefillConfig<kD>::kM;
  const int group = a.n_head / cache.n_head_kv;
  const int hq = group < kM ? group : kM;
  const int tq = kM / hq;
  const int head_tiles = (group + hq - 1) / hq;
  const int64_t grid_y = static_cast<int64_t>(cache.n_head_kv) * head_tiles;
  if (grid_y > 65535) {
    return absl::InvalidArgumentError("LaunchPrefillAttention: too many heads for the grid");
  }
  int64_t grid_x = (static_cast<int64_t>(a.max_chunk_len) + tq - 1) / tq;
  if (grid_x < 1) grid_x = 1;  // oversized chunks still get their NaN rows
  if (grid_x > INT_MAX) {
    return absl::InvalidArgumentError("LaunchPrefillAttention: max_chunk_len too large");
  }
  // As the CPU engine scales, times log2(e) for exp2.
  const float q_scale =
      (1.0f / std::sqrt(static_cast<float>(cache.head_dim))) * 1.44269504088896341f;
  const dim3 grid(static_cast<unsigned int>(grid_x), static_cast<unsigned int>(grid_y),
                  static_cast<unsigned int>(a.n_chunks));
  PrefillAttentionKernel<kD><<<grid, kThreads, 0, stream>>>(
      a.q, a.chunk_slot, a.chunk_pos, a.chunk_len, a.chunk_row, cache.k, cache.v, a.n_tok, a.n_head,
      cache.n_head_kv, cache.head_dim, group, hq, tq, head_tiles, a.max_chunk_len, a.max_context,
      cache.max_slots, cache.ctx_per_slot, q_scale, a.out);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

absl::Status LaunchPrefillAttention(const PrefillAttentionArgs& args, cudaStream_t stream) {
  const KvCacheLayer& cache = args.cache;
  if (args.n_tok < 0 || args.n_chunks < 0) {
    return absl::InvalidArgumentError("LaunchPrefillAttention: negative n_tok or n_chunks");
  }
  if (args.n_head <= 0 || cache.n_head_kv <= 0 || args.n_head % cache.n_head_kv != 0) {
    return absl::InvalidArgumentError(
        "LaunchPrefillAttention: n_head must be a positive multiple of n_head_kv");
  }
  if (cache.head_dim < kMinHeadDim || cache.head_dim > kMaxHeadDim || cache.head_dim % 8 != 0) {
    return absl::InvalidArgumentError(
        "LaunchPrefillAttention: head_dim must be a multiple of 8 in [8, 256]");
  }
  if (cache.max_slots <= 0 || cache.ctx_per_slot <= 0) {
    return absl::InvalidArgumentError(
        "LaunchPrefillAttention: max_slots and ctx_per_slot must be positive");
  }
  if (static_cast<double>(cache.max_slots) * cache.n_head_kv * cache.ctx_per_slot *
              cache.head_dim >=
          9.0e18 ||
      static_cast<double>(args.n_tok) * args.n_head * cache.head_dim >= 9.0e18) {
    return absl::InvalidArgumentError(
        "LaunchPrefillAttention: tensor shape exceeds int64 indexing");
  }
  if (args.n_chunks > 65535) {
    return absl::InvalidArgumentError("LaunchPrefillAttention: n_chunks exceeds 65535 (grid z)");
  }
  if (args.max_chunk_len < 0 || args.max_chunk_len > args.n_tok) {
    return absl::InvalidArgumentError(
        "LaunchPrefillAttention: max_chunk_len must be in [0, n_tok]");
  }
  if (args.max_context < 1 || args.max_context > cache.ctx_per_slot) {
    return absl::InvalidArgumentError(
        "LaunchPrefillAttention: max_context must be in [1, ctx_per_slot]");
  }
  if (args.n_chunks == 0 || args.n_tok == 0) return absl::OkStatus();  // no rows to write
  if (args.q == nullptr || args.chunk_slot == nullptr || args.chunk_pos == nullptr ||
      args.chunk_len == nullptr || args.chunk_row == nullptr || cache.k == nullptr ||
      cache.v == nullptr || args.out == nullptr) {
    return absl::InvalidArgumentError("LaunchPrefillAttention: null pointer");
  }
  if (!Aligned16(args.q) || !Aligned16(args.out) || !Aligned16(cache.k) || !Aligned16(cache.v)) {
    return absl::InvalidArgumentError(
        "LaunchPrefillAttention: q, out and the caches must be 16-byte aligned");
  }
  if (cache.head_dim <= 32) return Launch<32>(args, stream);
  if (cache.head_dim <= 64) return Launch<64>(args, stream);
  if (cache.head_dim <= 128) return Launch<128>(args, stream);
  return Launch<256>(args, stream);
}

}  // namespace m40llm::gpu
