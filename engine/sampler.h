// Token sampling: penalties, temperature, top-k / top-p / min-p truncation and
// a seeded draw whose randomness comes from Philox (engine/philox.h), so that
// a token depends only on (seed, stream, step, logits, history, params).
//
// This file is the specification the CUDA sampling kernel reimplements.
// Sample() does, in order:
//
//  1. Penalties, on a copy l of the logits (NaN logits become -inf first).
//     The window is the last `penalty_last_n` tokens of `history` (all of it
//     for -1, none for 0); ids outside [0, n_vocab) are ignored. For each
//     distinct token t in the window, occurring c times:
//       l[t] = l[t] > 0 ? l[t] / repetition_penalty
//                       : l[t] * repetition_penalty;
//       l[t] -= presence_penalty + c * frequency_penalty;
//  2. temperature == 0: the token is argmax(l), ties to the lowest id.
//  3. Otherwise the candidates are ordered by l descending, ties to the lower
//     id (the "sorted order"), and each gets the weight
//       w[i] = (l[i] == l_max) ? 1 : exp((l[i] - l_max) / temperature)
//     where l_max = max(l); the first form keeps +inf / all -inf logits
//     well defined. Truncation then keeps a prefix of the sorted order:
//     a. top_k > 0: the first top_k candidates.
//     b. top_p < 1: the shortest prefix whose cumulative weight reaches
//        top_p * W, W being the total weight of the top_k candidates (at
//        least one token is kept).
//     c. min_p > 0: only candidates with w[i] >= min_p (that is, probability
//        >= min_p * max probability).
//  4. With W' the total weight of the kept tokens, draw
//       u = UniformFloat(seed, stream, step, /*lane=*/0)   (in [0, 1))
//     and pick the first kept token, in sorted order, whose cumulative weight
//     exceeds u * W' (the first kept token should rounding leave none).
//
// Reported log-probabilities (of the chosen token and the top
// `n_logprobs`) are log-softmax of the RAW logits: the model's distribution,
// before penalties, temperature and truncation. The top list is sorted by
// raw logit descending, ties to the lower id.
//
// Sums of weights are accumulated in double here; the order of summation is
// not part of the contract. Host and device agree exactly on u, and on the
// token unless u * W' (or top_p * W) lands within rounding of a
// cumulative-weight boundary.
//
// Cost: O(n_vocab) passes (copy, exp, bucket by weight) plus sorts of only
// the weight buckets that a truncation or draw boundary falls in; no full
// sort of the vocabulary.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "engine/sampling_params.h"

namespace m40llm {

// One token with its raw log-probability.
struct TokenLogprob {
  int32_t token;
  float logprob;
};

// The chosen token, its raw log-probability and the top-n raw alternatives.
struct SampleResult {
  int32_t token;
  float logprob;
  std::vector<TokenLogprob> top;
};

// Buffers Sample() reuses between calls so that steady-state sampling does
// not allocate. One per thread; its contents are internal to the sampler and
// carry no state from one call to the next.
struct SamplerScratch {
  std::vector<float> logits;           // (n_vocab) penalised logits
  std::vector<float> weights;          // (n_vocab) w[i] of the candidates
  std::vector<int32_t> order;          // candidate ids, bucket by bucket
  std::vector<uint32_t> bucket_start;  // per weight bucket: first position
  std::vector<uint32_t> bucket_end;    // one past its last position
  std::vector<double> bucket_mass;     // its total weight
  std::vector<uint8_t> bucket_sorted;  // whether it is sorted yet
  std::vector<int32_t> counts;         // (n_vocab) window counts, all zero
  std::vector<int32_t> touched;        // ids with counts[id] > 0
};

// Applies step 1 (penalties) to `logits` in place, exactly as Sample() does
// before choosing; exposed for tests and for the device-kernel diff.
// `scratch` may be null.
void ApplyPenalties(std::span<float> logits, const SamplingParams& p,
                    std::span<const int32_t> history, SamplerScratch* scratch);

// Samples one token from `logits` (n_vocab floats, not modified). `history`
// is the sequence so far (prompt + generated) for penalties. `stream`/`step`
// select the RNG draw: stream identifies the sequence within its request (0
// for the usual single sequence), step is the index of the generated token
// (0 for the first). Depends on nothing else, so a request's tokens depend
// only on (seed, stream, step, logits, history, params). `p` must have passed
// Validate(logits.size()). `scratch` may be null (then it allocates).
SampleResult Sample(std::span<const float> logits, const SamplingParams& p,
                    std::span<const int32_t> history, uint64_t stream,
                    uint64_t step, SamplerScratch* scratch);

}  // namespace m40llm
