// Greedy evaluation of a prompt, in the shape of the conformance fixtures:
// the argmax (with margin) at every prompt position, the last position's
// logits, and N greedy continuation steps with their margins.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"

namespace m40llm {

struct TopChoice {
  int32_t token = -1;
  float logit = 0;
  float margin = 0;  // logit minus the runner-up's logit
};

struct EvalResult {
  std::vector<int32_t> prompt_tokens;
  std::vector<TopChoice> prompt_top1;  // one per prompt position
  std::vector<float> last_logits;      // (n_vocab) at the last prompt position
  std::vector<TopChoice> greedy;       // n_greedy steps
};

// Argmax (ties to the lowest id) and margin over one logit row.
TopChoice Top1(std::span<const float> logits);

// Runs the prompt in slot 0 of `backend` (all logits), then `n_greedy`
// single-token decode steps feeding back the argmax. Stops early only if the
// slot's context is full.
absl::StatusOr<EvalResult> RunGreedyEval(Backend& backend, std::span<const int32_t> prompt,
                                         int n_greedy);

}  // namespace m40llm
