// Appending keys and values to the FP16 KV cache.
//
// Cache layout, shared with the CPU engine (CpuBackend::KvIndex): FP16 bits,
// [layer][slot][kv_head][position][head_dim]. The launchers take one layer's
// base pointer, so inside a layer element (slot, kv_head, pos, d) is at
//   ((slot * n_head_kv + kv_head) * ctx_per_slot + pos) * head_dim + d.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace m40llm::gpu {

// Writes token t's K and V rows, rounded to FP16 (round to nearest even,
// bit-identical to m40llm::FloatToHalf / cpu::FloatToHalfRow), into the cache
// at (slots[t], kv_head, positions[t]) for every kv_head.
// k, v: (n_tok, n_head_kv * head_dim) FP32, device.
// slots, positions: (n_tok) int32, device. They are not readable here, so
//   the host cannot check them: a token whose slot is outside [0, max_slots)
//   or whose position is outside [0, ctx_per_slot) is skipped on the device
//   (nothing is written for it). Each (slot, position) may appear at most once
//   per call (duplicates race).
// k_cache, v_cache: one layer, (max_slots, n_head_kv, ctx_per_slot, head_dim)
//   FP16 bits, device; no aliasing with k or v.
// row_stride: floats from one token's K (and V) row to the next; 0 means
// n_head_kv * head_dim (packed). A larger stride reads K and V inside fused
// QKV rows.
// Any head_dim >= 1; even head_dims and strides with 8-byte aligned k, v and
// 4-byte aligned caches take a two-values-per-thread path.
[[nodiscard]] absl::Status LaunchKvAppend(const float* k, const float* v, int64_t n_tok,
                                          const int32_t* slots, const int32_t* positions,
                                          int n_head_kv, int head_dim, uint16_t* k_cache,
                                          uint16_t* v_cache, int max_slots, int ctx_per_slot,
                                          cudaStream_t stream, int64_t row_stride = 0);

}  // namespace m40llm::gpu
