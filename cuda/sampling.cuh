// Token sampling on the device: one block per sequence reproduces
// m40llm::Sample() (engine/sampler.h, the specification) on a logits row,
// with the same Philox draw, so host and device pick the same token.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "persistent/config.h"
#include "persistent/protocol.h"

namespace m40llm::gpu {

// Largest vocabulary LaunchSample accepts: token ids fit the 24 id bits of
// the kernel's sort keys, and n_vocab weights of at most 2^42 (the fixed-point
// scale of the weight sums) fit 64 bits.
inline constexpr int kSampleMaxVocab = 1 << 21;

// One sequence's result: the token, its raw log-probability and the top
// n_top raw alternatives, sorted by raw logit descending, ties to the lower id
// (entries n_top.. hold token -1 and NaN); the fields of Event
// (persistent/protocol.h) with the same names take them unchanged.
struct DeviceSample {
  int32_t token;
  float logprob;
  int32_t n_top;
  int32_t pad;
  EventLogprob top[kMaxEventLogprobs];
};
static_assert(sizeof(DeviceSample) == 16 + 8 * kMaxEventLogprobs, "DeviceSample layout changed");

// Device scratch LaunchSample needs for up to max_seqs rows of n_vocab
// logits: 8 bytes per logit (a candidate-id list that also serves as the
// penalty counts, and the raw values of penalised tokens). Allocate once.
size_t SampleWorkspaceBytes(int max_seqs, int n_vocab);

// Arguments of LaunchSample.
struct SampleArgs {
  // (n_seq, n_vocab) FP32, device. Clobbered: NaN entries become -inf and the
  // penalties are applied in place.
  float* logits = nullptr;
  int n_seq = 0;
  int n_vocab = 0;
  // (n_seq) SamplingParams, device; each must pass
  // SamplingParams::Validate(n_vocab) (the kernel stays memory-safe on
  // others, but their results are unspecified).
  const SamplingParams* params = nullptr;
  // (n_seq, hist_stride) int32 token ids, device, or null (no history). Ids
  // outside [0, n_vocab) are ignored, as on the host.
  const int32_t* history = nullptr;
  int64_t hist_stride = 0;
  // (n_seq) int32, device; entries are clamped to [0, hist_stride]. May be
  // null when history is.
  const int32_t* hist_len = nullptr;
  const uint64_t* streams = nullptr;  // (n_seq) uint64, device, or null (all 0)
  // (n_seq) int32 >= 0, device: the generated-token index of each draw.
  const int32_t* steps = nullptr;
  // >= SampleWorkspaceBytes(n_seq, n_vocab) bytes of device memory, 4-byte
  // aligned, not aliasing anything else.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  DeviceSample* out = nullptr;  // (n_seq) DeviceSample, device
};

// Per sequence s: samples one token from logits row s with params[s], the
// token history history[s * hist_stride .. + hist_len[s]) for the penalties,
// and the draw UniformFloat(seed = params[s].seed, stream = streams ? streams[s]
// : 0, step = steps[s], lane 0), exactly as m40llm::Sample() with the same
// SamplingParams (SampleArgs gives the shapes). Tokens agree with
// the host unless a truncation or draw level lands within rounding of a
// cumulative-weight boundary (the weights use the device's expf).
//
// Constraints: 1 <= n_vocab <= kSampleMaxVocab. Sums of weights are exact
// integer sums of round(w * 2^42), so the result does not depend on thread
// timing; the order of summation is not part of the contract.
[[nodiscard]] absl::Status LaunchSample(const SampleArgs& args, cudaStream_t stream);

}  // namespace m40llm::gpu
