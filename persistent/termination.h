// When a sequence ends on its own: the one rule every decoder applies (the
// host decoder on the host, the persistent kernel on the device) to every
// generated token, the first one (sampled by prefill) included. The host
// never decides it; it only cancels (persistent/protocol.h). Must stay valid
// C++17: CUDA sources include it.
#pragma once

#include <cstdint>

#include "engine/hd.h"
#include "persistent/protocol.h"

namespace m40llm {

// Why the sequence ends after sampling `token` as its generated token
// `step` (0 = prefill's) at position `pos`, or kNone when it goes on:
//   kStop    `token` is one of the `n_eog` end-of-generation ids in `eog`
//            (unless s.ignore_eos) or one of s's stop ids. The token is not
//            streamed.
//   kLength  the token is streamed and is the last one: it is generated
//            token max_tokens - 1, or it sits at the last position of a
//            slot of `ctx_per_slot` positions (feeding it would need one more).
M40_HD inline FinishReason FinishAfter(const SamplingState& s, const int32_t* eog, int n_eog,
                                       int32_t token, int32_t step, int32_t pos,
                                       int32_t ctx_per_slot) {
  if (s.ignore_eos == 0) {
    for (int i = 0; i < n_eog; ++i) {
      if (eog[i] == token) return FinishReason::kStop;
    }
  }
  const int n_stop = s.n_stop_ids < kMaxStopIds ? s.n_stop_ids : kMaxStopIds;
  for (int i = 0; i < n_stop; ++i) {
    if (s.stop_ids[i] == token) return FinishReason::kStop;
  }
  if (step + 1 >= s.max_tokens || pos + 1 >= ctx_per_slot) return FinishReason::kLength;
  return FinishReason::kNone;
}

}  // namespace m40llm
