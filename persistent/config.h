// Tunables of the ring protocol and the decoder, in one place, with the
// budgets they must respect. C++17: CUDA sources include it.
#pragma once

#include <cstdint>

namespace m40llm {

// Ring capacities (records). Powers of two so that index & (N - 1) wraps.
inline constexpr uint32_t kCommandRingSize = 256;
inline constexpr uint32_t kEventRingSize = 1024;
static_assert((kCommandRingSize & (kCommandRingSize - 1)) == 0, "power of two");
static_assert((kEventRingSize & (kEventRingSize - 1)) == 0, "power of two");

// Stop token ids carried per sequence (besides the model's EOS/EOT).
inline constexpr int kMaxStopIds = 8;

// Top-n logprobs an event can carry; the API allows up to this many.
inline constexpr int kMaxEventLogprobs = 20;

// Most sequences one decoder can hold (the --max-batch ceiling).
inline constexpr int kMaxSlots = 256;

// Every event one decode step can produce (a token and a finish per slot)
// fits in an empty event ring; a fuller ring makes the decoder wait
// (backpressure), never overwrite.
static_assert(kEventRingSize >= 2 * kMaxSlots, "event ring smaller than one step's events");

}  // namespace m40llm
