// Conversions between the engine's SamplingParams and the ring protocol's POD
// SamplingState (persistent/protocol.h), whose sampling fields mean the same:
// one place, so that the decode loops, the scheduler and the CUDA backend
// cannot drift apart. Host code (C++20).
#pragma once

#include "engine/sampler.h"
#include "persistent/protocol.h"

namespace m40llm {

// The sampling fields of `s`; max_tokens, ignore_eos and stop ids are not
// sampling parameters and are left out.
inline SamplingParams ToSamplingParams(const SamplingState& s) {
  SamplingParams p;
  p.temperature = s.temperature;
  p.top_k = s.top_k;
  p.top_p = s.top_p;
  p.min_p = s.min_p;
  p.repetition_penalty = s.repetition_penalty;
  p.presence_penalty = s.presence_penalty;
  p.frequency_penalty = s.frequency_penalty;
  p.penalty_last_n = s.penalty_last_n;
  p.seed = s.seed;
  p.n_logprobs = s.n_logprobs;
  return p;
}

// A SamplingState with the sampling fields of `p`; the rest zero.
inline SamplingState ToSamplingState(const SamplingParams& p) {
  SamplingState s{};
  s.temperature = p.temperature;
  s.top_p = p.top_p;
  s.min_p = p.min_p;
  s.repetition_penalty = p.repetition_penalty;
  s.presence_penalty = p.presence_penalty;
  s.frequency_penalty = p.frequency_penalty;
  s.top_k = p.top_k;
  s.penalty_last_n = p.penalty_last_n;
  s.seed = p.seed;
  s.n_logprobs = p.n_logprobs;
  return s;
}

}  // namespace m40llm
