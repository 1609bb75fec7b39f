// The model as the device holds it: one arena with every weight, viewed per
// layer (pointers, shapes and row strides), and the KV cache with its
// per-layer views; plus the memory plan that sizes them (PlanCudaMemory,
// cuda_backend.h). Host code.
//
// Weights: every matrix (rows, ld) FP16 with ld = cols rounded up to 8 halves
// (16-byte rows for the matmul kernels; the embedding table stays dense for
// the gather), norms and Q/K/V biases FP32. KV cache: K and V, [layer][slot][kv_head][pos]
// [head_dim] FP16.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cuda/device_memory.h"
#include "cuda/kv_cache.cuh"
#include "engine/backend.h"
#include "engine/gguf.h"
#include "engine/model.h"

namespace m40llm::gpu {

// What the memory plan leaves free for the CUDA context and allocator slack.
inline constexpr uint64_t kReserveBytes = 256ull << 20;

// b bytes in GiB, for messages.
inline double GiB(uint64_t b) { return static_cast<double>(b) / (1ull << 30); }

// Halves per device row of a matrix with `cols` columns: cols rounded up to
// kMatVecRowAlignHalves.
int64_t PaddedCols(int64_t cols);

// Device bytes of a (rows, cols) FP16 matrix with padded rows.
uint64_t MatrixBytes(int64_t rows, int64_t cols);

// Device bytes of every weight of a model (as PlanCudaMemory counts them).
uint64_t WeightBytesFor(const ModelConfig& c);

// A matrix in the weight arena.
struct DeviceMatrix {
  const uint16_t* w = nullptr;  // (rows, ld) FP16 bits
  int64_t rows = 0, cols = 0, ld = 0;
};

// A layer's weights. wq, wk and wv are consecutive rows of one allocation,
// viewed whole as qkv (q_dim + 2 kv_dim rows), and gate and up likewise as
// gate_up (2 n_ff rows): decode steps run one product for each, prompts the
// separate ones.
struct DeviceLayer {
  const float* attn_norm = nullptr;  // (n_embd)
  DeviceMatrix wq, wk, wv, wo;
  // With qkv_bias (qwen2): bq, bk, bv consecutive, (q_dim + 2 kv_dim) FP32,
  // matching qkv's rows; null without.
  const float* qkv_bias = nullptr;
  DeviceMatrix qkv;
  const float* ffn_norm = nullptr;  // (n_embd)
  DeviceMatrix gate, up, down;
  DeviceMatrix gate_up;
};

// Weights and KV cache on the device.
struct DeviceModel {
  DeviceBuffer<uint8_t> weights;  // one arena for every weight
  uint64_t weight_used = 0;
  DeviceMatrix token_embd, output;
  const float* output_norm = nullptr;  // (n_embd)
  const float* rope_freqs = nullptr;   // (n_rot / 2), or null
  std::vector<DeviceLayer> layers;
  DeviceBuffer<uint16_t> k_cache, v_cache;  // (n_layer, slots, kv_heads, ctx, head_dim)
  uint64_t layer_cache_values = 0;          // values per layer in each cache
  int max_slots = 0;                        // KV cache slots
  int ctx_per_slot = 0;                     // positions per slot
  int n_head_kv = 0, head_dim = 0;

  // The LM head: the output matrix, or the tied embedding when there is none.
  const DeviceMatrix& lm_head(const ModelConfig& c) const {
    return c.tied_output ? token_embd : output;
  }

  // Layer l's slice of the KV cache.
  KvCacheLayer kv(int l) const {
    return KvCacheLayer{k_cache.get() + l * layer_cache_values,
                        v_cache.get() + l * layer_cache_values,
                        max_slots,
                        n_head_kv,
                        ctx_per_slot,
                        head_dim};
  }

  // Carves `bytes` (rounded up to 256) from the weight arena.
  absl::StatusOr<void*> Carve(uint64_t bytes);

  // Allocates the weight arena (weight_bytes plus the carves' padding) and
  // the KV cache for o.max_slots slots of o.ctx_per_slot positions.
  absl::Status Allocate(const ModelConfig& c, const BackendOptions& o, uint64_t weight_bytes);

  // Streams the weights of `file` into the arena one tensor at a time: each
  // matrix is dequantised into one reused host buffer, then copied into its
  // padded device rows. progress, n_threads and clamped as in
  // StreamLlamaWeights (engine/model.h).
  absl::Status LoadWeights(const GgufFile& file, const ModelConfig& c, const ProgressFn& progress,
                           int n_threads, uint64_t* clamped);
};

}  // namespace m40llm::gpu
