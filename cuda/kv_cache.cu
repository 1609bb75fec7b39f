// KV-cache append kernel and launcher (see kv_cache.cuh).
#include <climits>
#include <cstdint>

#include "cuda/cuda_check.h"
#include "cuda/kv_cache.cuh"
#include "cuda/kv_cache_device.cuh"

namespace m40llm::gpu {
namespace {

// One block per token (kv_cache_device.cuh).
template <int kBlock, bool kPairs>
__global__ void __launch_bounds__(kBlock)
    KvAppendKernel(const float* __restrict__ k,  // (n_tok, row_stride), heads packed in a row
                   const float* __restrict__ v,  // (n_tok, row_stride)
                   int64_t row_stride,
                   const int32_t* __restrict__ slots,      // (n_tok)
                   const int32_t* __restrict__ positions,  // (n_tok)
                   int n_head_kv, int head_dim,
                   uint16_t* __restrict__ k_cache,  // (max_slots, n_head_kv, ctx, head_dim)
                   uint16_t* __restrict__ v_cache,  // (max_slots, n_head_kv, ctx, head_dim)
                   int max_slots, int ctx_per_slot) {
  kv_cache::KvAppendToken<kBlock, kPairs>(blockIdx.x, k, v, row_stride, slots, positions, n_head_kv,
                                          head_dim, k_cache, v_cache, max_slots, ctx_per_slot);
}

bool Aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace

absl::Status LaunchKvAppend(const KvAppendArgs& args, cudaStream_t stream) {
  const KvCacheLayer& cache = args.cache;
  int64_t row_stride = args.row_stride;
  if (args.n_tok < 0) return absl::InvalidArgumentError("LaunchKvAppend: negative n_tok");
  if (cache.n_head_kv <= 0 || cache.head_dim <= 0 || cache.max_slots <= 0 ||
      cache.ctx_per_slot <= 0) {
    return absl::InvalidArgumentError(
        "LaunchKvAppend: n_head_kv, head_dim, max_slots and ctx_per_slot must be positive");
  }
  if (static_cast<int64_t>(cache.n_head_kv) * cache.head_dim > INT_MAX) {
    return absl::InvalidArgumentError("LaunchKvAppend: n_head_kv * head_dim exceeds int32");
  }
  // Cache indices are int64: the product of four int32 sizes need not fit.
  const double cache_values =
      static_cast<double>(cache.max_slots) * cache.n_head_kv * cache.ctx_per_slot * cache.head_dim;
  if (cache_values >= 9.0e18) {
    return absl::InvalidArgumentError("LaunchKvAppend: cache shape exceeds int64 indexing");
  }
  if (args.n_tok > INT_MAX) {
    return absl::InvalidArgumentError("LaunchKvAppend: n_tok exceeds the grid");
  }
  const int64_t kv_dim = static_cast<int64_t>(cache.n_head_kv) * cache.head_dim;
  if (row_stride == 0) row_stride = kv_dim;
  if (row_stride < kv_dim) {
    return absl::InvalidArgumentError(
        "LaunchKvAppend: row_stride must be 0 or at least n_head_kv * head_dim");
  }
  if (args.n_tok == 0) return absl::OkStatus();
  if (args.k == nullptr || args.v == nullptr || args.slots == nullptr ||
      args.positions == nullptr || cache.k == nullptr || cache.v == nullptr) {
    return absl::InvalidArgumentError("LaunchKvAppend: null pointer");
  }
  constexpr int kBlock = 128;
  const bool pairs = cache.head_dim % 2 == 0 && row_stride % 2 == 0 && Aligned(args.k, 8) &&
                     Aligned(args.v, 8) && Aligned(cache.k, 4) && Aligned(cache.v, 4);
  const unsigned int grid = static_cast<unsigned int>(args.n_tok);
  if (pairs) {
    KvAppendKernel<kBlock, true><<<grid, kBlock, 0, stream>>>(
        args.k, args.v, row_stride, args.slots, args.positions, cache.n_head_kv, cache.head_dim,
        cache.k, cache.v, cache.max_slots, cache.ctx_per_slot);
  } else {
    KvAppendKernel<kBlock, false><<<grid, kBlock, 0, stream>>>(
        args.k, args.v, row_stride, args.slots, args.positions, cache.n_head_kv, cache.head_dim,
        cache.k, cache.v, cache.max_slots, cache.ctx_per_slot);
  }
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace m40llm::gpu
