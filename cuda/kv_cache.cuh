// Appending keys and values to the FP16 KV cache.
//
// Cache layout, shared with the CPU engine (CpuBackend::KvIndex): FP16 bits,
// [layer][slot][kv_head][position][head_dim]. The launchers take one layer's
// view (KvCacheLayer), so inside a layer element (slot, kv_head, pos, d) is at
//   ((slot * n_head_kv + kv_head) * ctx_per_slot + pos) * head_dim + d.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace m40llm::gpu {

// One layer of the cache as the launchers take it: K and V, each
// (max_slots, n_head_kv, ctx_per_slot, head_dim) FP16 bits, device (the
// attention launchers only read it).
struct KvCacheLayer {
  uint16_t* k = nullptr;
  uint16_t* v = nullptr;
  int max_slots = 0;
  int n_head_kv = 0;
  int ctx_per_slot = 0;
  int head_dim = 0;
};

// Arguments of LaunchKvAppend.
struct KvAppendArgs {
  const float* k = nullptr;  // (n_tok, n_head_kv * head_dim) FP32, device (rows row_stride apart)
  const float* v = nullptr;  // (n_tok, n_head_kv * head_dim) FP32, device (likewise)
  int64_t n_tok = 0;
  // (n_tok) int32, device. They are not readable here, so the host cannot
  // check them: a token whose slot is outside [0, max_slots) or whose
  // position is outside [0, ctx_per_slot) is skipped on the device (nothing
  // is written for it). Each (slot, position) may appear at most once per
  // call (duplicates race).
  const int32_t* slots = nullptr;
  const int32_t* positions = nullptr;
  KvCacheLayer cache;  // no aliasing with k or v
  // Floats from one token's K (and V) row to the next; 0 means
  // n_head_kv * head_dim (packed). A larger stride reads K and V inside fused
  // QKV rows.
  int64_t row_stride = 0;
};

// Writes token t's K and V rows, rounded to FP16 (round to nearest even,
// bit-identical to m40llm::FloatToHalf / cpu::FloatToHalfRow), into the cache
// at (slots[t], kv_head, positions[t]) for every kv_head (KvAppendArgs gives
// the shapes). Any head_dim >= 1; even head_dims and strides with 8-byte
// aligned k, v and 4-byte aligned caches take a two-values-per-thread path.
[[nodiscard]] absl::Status LaunchKvAppend(const KvAppendArgs& args, cudaStream_t stream);

}  // namespace m40llm::gpu
