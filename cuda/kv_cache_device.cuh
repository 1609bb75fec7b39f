// Device side of the KV-cache append: what one block of the append kernel
// does, as a __device__ function that the standalone kernel (kv_cache.cu) and
// the persistent decode kernel both call. Cache layout as in kv_cache.cuh.
// Included only by .cu files (see cuda/README.md, "Device functions"); C++17
// and sm_52 features only.
#pragma once

#if !defined(__CUDACC__)
#error "cuda/kv_cache_device.cuh is for CUDA sources only"
#endif

#include <cstdint>

#include "engine/fp16.h"

namespace m40llm::gpu::kv_cache {

// Writes token t's K and V rows into the cache, by the kBlock threads of one
// block (no barrier). kPairs: each thread converts two adjacent values of a
// head (head_dim even, so a pair never straddles two heads) with one 8-byte
// load per row and one 4-byte store per cache; otherwise one value a thread.
// The rounding is m40llm::FloatToHalf, the CPU engine's own definition, so the
// cache holds the same bits whichever backend wrote it. A token whose slot or
// position is out of range is skipped.
template <int kBlock, bool kPairs>
__device__ __forceinline__ void KvAppendToken(
    int64_t t,
    const float* __restrict__ k,  // (n_tok, row_stride), heads packed in a row
    const float* __restrict__ v,  // (n_tok, row_stride)
    int64_t row_stride,
    const int32_t* __restrict__ slots,      // (n_tok)
    const int32_t* __restrict__ positions,  // (n_tok)
    int n_head_kv, int head_dim,
    uint16_t* __restrict__ k_cache,  // (max_slots, n_head_kv, ctx, head_dim)
    uint16_t* __restrict__ v_cache,  // (max_slots, n_head_kv, ctx, head_dim)
    int max_slots, int ctx_per_slot) {
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

}  // namespace m40llm::gpu::kv_cache
