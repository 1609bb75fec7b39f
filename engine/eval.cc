// Greedy evaluation used by `m40llm eval` and the conformance tests.
#include "engine/eval.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/status.h"

namespace m40llm {

TopChoice Top1(std::span<const float> logits) {
  TopChoice best;
  float second = -INFINITY;
  best.logit = -INFINITY;
  for (size_t i = 0; i < logits.size(); ++i) {
    const float l = logits[i];
    if (best.token < 0 || l > best.logit) {
      second = best.token < 0 ? -INFINITY : best.logit;
      best.logit = l;
      best.token = static_cast<int32_t>(i);
    } else if (l > second) {
      second = l;
    }
  }
  best.margin = best.logit - second;
  return best;
}

absl::StatusOr<EvalResult> RunGreedyEval(Backend& backend, std::span<const int32_t> prompt,
                                         int n_greedy) {
  if (prompt.empty()) return absl::InvalidArgumentError("eval needs at least one prompt token");
  const int n_vocab = backend.config().n_vocab;
  EvalResult r;
  r.prompt_tokens.assign(prompt.begin(), prompt.end());
  ForwardOutput out;
  SeqChunk chunk{0, 0, prompt, /*all_logits=*/true};
  RETURN_IF_ERROR(backend.Forward({&chunk, 1}, &out));
  for (int64_t row = 0; row < out.rows; ++row) {
    r.prompt_top1.push_back(Top1({out.logits.data() + row * n_vocab, size_t(n_vocab)}));
  }
  r.last_logits.assign(out.logits.end() - n_vocab, out.logits.end());
  int pos = static_cast<int>(prompt.size());
  int32_t next = r.prompt_top1.back().token;
  for (int step = 0; step < n_greedy; ++step) {
    r.greedy.push_back(step == 0 ? r.prompt_top1.back()
                                 : Top1({out.logits.data(), size_t(n_vocab)}));
    next = r.greedy.back().token;
    if (step + 1 == n_greedy) break;
    if (pos >= backend.options().ctx_per_slot) break;
    SeqChunk dec{0, pos, {&next, 1}, false};
    RETURN_IF_ERROR(backend.Forward({&dec, 1}, &out));
    ++pos;
  }
  return r;
}

}  // namespace m40llm
