// A pass context: the stream and device scratch one forward pass needs, the
// host staging of its inputs and outputs, and its captured decode graphs. The
// CUDA backend has kPassContexts of them, each with its own stream, so a
// prefill and a decode step (the scheduler's two threads) run concurrently on
// the device. Host code.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "cuda/device_memory.h"
#include "cuda/graph_cache.h"
#include "cuda/sampling.cuh"
#include "engine/backend.h"
#include "engine/model.h"

namespace m40llm::gpu {

inline constexpr int kPassContexts = 2;  // prefill and decode run side by side
inline constexpr int kLogitRows = 64;    // LM-head rows per launch (and device buffer)

// Where one LM-head chunk's sampling inputs sit in the staging buffers
// (pinned and device, same layout): SamplingParams, stream, history length and
// step per row, then each row's penalty window of up to H tokens.
struct SampleLayout {
  size_t params = 0, streams = 0, hist_len = 0, steps = 0, hist = 0, bytes = 0;
  int64_t H = 0;  // tokens per history row
  explicit SampleLayout(int64_t ctx_per_slot);
};

// Bytes of one pass context's device scratch.
struct ScratchShape {
  int64_t T;  // tokens per pass
  uint64_t floats = 0, ints = 0, attn_ws = 0, sample = 0;
};

// The scratch of one pass context for passes of up to max_tokens_per_pass
// tokens (at least 1) on slots of ctx_per_slot positions.
ScratchShape ScratchFor(const ModelConfig& c, int max_tokens_per_pass, int ctx_per_slot);

// One stream and the scratch one forward pass needs.
struct PassContext {
  CudaStream stream;
  DeviceBuffer<float> floats;                         // carved into the activations below
  float *x = nullptr, *h = nullptr, *proj = nullptr;  // (T, n_embd)
  float *q = nullptr, *att = nullptr;                 // (T, q_dim)
  float *k = nullptr, *v = nullptr;                   // (T, kv_dim)
  float *gate = nullptr, *up = nullptr;               // (T, n_ff)
  float* logits = nullptr;                            // (kLogitRows, n_vocab)
  float* qkv = nullptr;        // (kLogitRows, q_dim + 2 kv_dim): fused decode product
  float* gate_up = nullptr;    // (kLogitRows, 2 n_ff): fused decode product
  DeviceBuffer<int32_t> ints;  // ids, slots, positions, lengths (T each), chunks (4 x T)
  DeviceBuffer<uint8_t> attn_ws;
  PinnedBuffer<int32_t> host_ints;  // staging for `ints`
  PinnedBuffer<float> host_logits;  // (kLogitRows, n_vocab)
  // Device sampling (ForwardSample): staged inputs (SampleLayout), the
  // kernel's workspace, and its results.
  DeviceBuffer<uint8_t> sample_in;
  PinnedBuffer<uint8_t> host_sample_in;
  DeviceBuffer<uint8_t> sample_ws;
  DeviceBuffer<DeviceSample> sample_out;
  PinnedBuffer<DeviceSample> host_sample_out;
  // Captured decode steps: one graph launch replays the whole step
  // (embedding to LM head, and sampling) instead of one launch per operation.
  DecodeGraphCache graphs;
  bool busy = false;
};

// Creates p's stream and allocates its scratch (shape s) and staging.
absl::Status AllocatePassContext(const ModelConfig& c, const ScratchShape& s, int ctx_per_slot,
                                 PassContext* p);

// Device sampling of the m logit rows in p.logits in three parts, so that a
// captured decode step can hold the kernel while the copies stay outside:
// stage specs[0..m) into the device's staging buffer (StageSampleInputs),
// enqueue the kernel (EnqueueSample), fetch the results into out[0..m)
// (FetchSamples). Each row's history is staged as its penalty
// window only (the last penalty_last_n tokens, all for -1), which the kernel
// then reads whole: the same tokens Sample() looks at.
absl::Status StageSampleInputs(int ctx_per_slot, PassContext& p, std::span<const SampleSpec> specs,
                               cudaStream_t st);
absl::Status EnqueueSample(const ModelConfig& c, int ctx_per_slot, PassContext& p, int m,
                           cudaStream_t st);
absl::Status FetchSamples(PassContext& p, int m, cudaStream_t st, SampleResult* out);

// Copies m logit rows to out (n_vocab floats each) through the pinned buffer.
absl::Status FetchLogits(const ModelConfig& c, PassContext& p, int64_t m, cudaStream_t st,
                         float* out);

}  // namespace m40llm::gpu
