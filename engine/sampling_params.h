// The parameters of one sequence's sampling (the semantics: engine/sampler.h).
// A POD with one layout for host and device code: the ring protocol carries
// it in every admit command (persistent/protocol.h), the CUDA sampling kernel
// reads it as it is, and the host sampler takes it by reference, so it is
// built once per request and never converted. Must stay valid C++17: CUDA
// sources include it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "absl/status/status.h"

namespace m40llm {

// Most entries a caller may ask for in SampleResult::top.
inline constexpr int32_t kMaxLogprobs = 20;

// How to pick the next token; the defaults sample from the plain softmax.
struct SamplingParams {
  float temperature = 1.0f;  // 0 => greedy (argmax; ties -> lowest id)
  int32_t top_k = 0;         // 0 (or >= n_vocab) => disabled
  float top_p = 1.0f;        // 1 => disabled
  float min_p = 0.0f;        // 0 => disabled
  // 1 => disabled; CTRL-style over tokens in the penalty window:
  // logit > 0 ? logit / p : logit * p. Must be in (0, 100].
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;   // once per distinct token; in [-2, 2]
  float frequency_penalty = 0.0f;  // count * f; in [-2, 2]
  // Recent tokens (prompt + generated) the penalties look at: 0 => none,
  // -1 => the whole history.
  int32_t penalty_last_n = 64;
  uint64_t seed = 0;
  int32_t n_logprobs = 0;  // top-n raw logprobs to report, 0..kMaxLogprobs

  // InvalidArgument naming the field and its allowed range when a value is
  // out of range (or non-finite), or when n_vocab is not positive.
  [[nodiscard]] absl::Status Validate(int32_t n_vocab) const;
};
static_assert(std::is_trivially_copyable<SamplingParams>::value, "shared with device code");
static_assert(std::is_standard_layout<SamplingParams>::value, "shared with device code");
static_assert(sizeof(SamplingParams) == 48 && alignof(SamplingParams) == 8,
              "SamplingParams layout changed: the ring protocol carries it");
static_assert(offsetof(SamplingParams, seed) == 32 && offsetof(SamplingParams, n_logprobs) == 40,
              "SamplingParams layout changed: the ring protocol carries it");

}  // namespace m40llm
