// KV-cache append kernel and launcher (see kv_cache.cuh).
#include <climits>
#include <cstdint>

#include "cuda/cuda_check.h"
#include "cuda/kv_cache.cuh"
#include "engine/fp16.h"

namespace m40llm::gpu {
namespace {

// One block per token. kPairs: each thread converts two adjacent values of a
// head (head_dim even, so a pair never straddles two heads) with one 8-byte
// load per row and one 4-byte store per cache; otherwise one value a thread.
// The rounding is m40llm::FloatToHalf, the CPU engine's own definition, so the
// cache holds the same bits whichever backend wrote it.
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
  const int64_t t = blockIdx.x;
  const int32_t slot = __ldg(slots + t);
  const int32_t pos = __ldg(positions + t);
  // Untrusted indices: skip the token rather than write outside its slot.
  if (slot < 0 || slot >= max_slots || pos < 0 || pos >= ctx_per_slot) return;

  const int kv_dim = n_head_kv * head_dim;
  const float* k_row = k + t * row_stride;
  const float* v_row = v + t * row_stride;
  // Element (h, d) of the token goes to head_base + h * head_stride + d.
  const int64_t head_stride = static_cast<int64_t>(ctx_per_slot) * head_dim;
  const int64_t head_base =
      static_cast<int64_t>(slot) * n_head_kv * head_stride + static_cast<int64_t>(pos) * head_dim;

  if constexpr (kPairs) {
    for (int i = 2 * static_cast<int>(threadIdx.x); i < kv_dim; i += 2 * kBlock) {
      const int h = i / head_dim;
      const int d = i - h * head_dim;
      const int64_t at = head_base + h * head_stride + d;
      const float2 kf = __ldg(reinterpret_cast<const float2*>(k_row + i));
      const float2 vf = __ldg(reinterpret_cast<const float2*>(v_row + i));
      // Memory order: the lower address is the low half of the 32-bit word.
      const uint32_t kh = static_cast<uint32_t>(FloatToHalf(kf.x)) |
                          (static_cast<uint32_t>(FloatToHalf(kf.y)) << 16);
      const uint32_t vh = static_cast<uint32_t>(FloatToHalf(vf.x)) |
                          (static_cast<uint32_t>(FloatToHalf(vf.y)) << 16);
      *reinterpret_cast<uint32_t*>(k_cache + at) = kh;
      *reinterpret_cast<uint32_t*>(v_cache + at) = vh;
    }
  } else {
    for (int i = threadIdx.x; i < kv_dim; i += kBlock) {
      const int h = i / head_dim;
      const int d = i - h * head_dim;
      const int64_t at = head_base + h * head_stride + d;
      k_cache[at] = FloatToHalf(__ldg(k_row + i));
      v_cache[at] = FloatToHalf(__ldg(v_row + i));
    }
  }
}

bool Aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace

absl::Status LaunchKvAppend(const float* k, const float* v, int64_t n_tok, const int32_t* slots,
                            const int32_t* positions, int n_head_kv, int head_dim,
                            uint16_t* k_cache, uint16_t* v_cache, int max_slots, int ctx_per_slot,
                            cudaStream_t stream, int64_t row_stride) {
  if (n_tok < 0) return absl::InvalidArgumentError("LaunchKvAppend: negative n_tok");
  if (n_head_kv <= 0 || head_dim <= 0 || max_slots <= 0 || ctx_per_slot <= 0) {
    return absl::InvalidArgumentError(
        "LaunchKvAppend: n_head_kv, head_dim, max_slots and ctx_per_slot must be positive");
  }
  if (static_cast<int64_t>(n_head_kv) * head_dim > INT_MAX) {
    return absl::InvalidArgumentError("LaunchKvAppend: n_head_kv * head_dim exceeds int32");
  }
  // Cache indices are int64: the product of four int32 sizes need not fit.
  const double cache_values = static_cast<double>(max_slots) * n_head_kv * ctx_per_slot * head_dim;
  if (cache_values >= 9.0e18) {
    return absl::InvalidArgumentError("LaunchKvAppend: cache shape exceeds int64 indexing");
  }
  if (n_tok > INT_MAX) return absl::InvalidArgumentError("LaunchKvAppend: n_tok exceeds the grid");
  const int64_t kv_dim = static_cast<int64_t>(n_head_kv) * head_dim;
  if (row_stride == 0) row_stride = kv_dim;
  if (row_stride < kv_dim) {
    return absl::InvalidArgumentError(
        "LaunchKvAppend: row_stride must be 0 or at least n_head_kv * head_dim");
  }
  if (n_tok == 0) return absl::OkStatus();
  if (k == nullptr || v == nullptr || slots == nullptr || positions == nullptr ||
      k_cache == nullptr || v_cache == nullptr) {
    return absl::InvalidArgumentError("LaunchKvAppend: null pointer");
  }
  constexpr int kBlock = 128;
  const bool pairs = head_dim % 2 == 0 && row_stride % 2 == 0 && Aligned(k, 8) && Aligned(v, 8) &&
                     Aligned(k_cache, 4) && Aligned(v_cache, 4);
  const unsigned int grid = static_cast<unsigned int>(n_tok);
  if (pairs) {
    KvAppendKernel<kBlock, true><<<grid, kBlock, 0, stream>>>(
        k, v, row_stride, slots, positions, n_head_kv, head_dim, k_cache, v_cache, max_slots,
        ctx_per_slot);
  } else {
    KvAppendKernel<kBlock, false><<<grid, kBlock, 0, stream>>>(
        k, v, row_stride, slots, positions, n_head_kv, head_dim, k_cache, v_cache, max_slots,
        ctx_per_slot);
  }
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace m40llm::gpu
