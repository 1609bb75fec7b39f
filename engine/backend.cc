// Batch validation shared by every backend.
#include "engine/backend.h"

#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "engine/status.h"

namespace m40llm {

absl::Status ValidateBatch(const ModelConfig& c, const BackendOptions& o,
                           std::span<const SeqChunk> batch) {
  std::unordered_set<int> slots;
  for (size_t i = 0; i < batch.size(); ++i) {
    const SeqChunk& s = batch[i];
    if (s.slot < 0 || s.slot >= o.max_slots) {
      return absl::InvalidArgumentError(absl::StrCat("chunk ", i, ": slot ", s.slot,
                                                     " is outside 0..", o.max_slots - 1));
    }
    if (!slots.insert(s.slot).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunk ", i, ": slot ", s.slot, " appears twice in one batch"));
    }
    if (s.tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("chunk ", i, ": no tokens"));
    }
    if (s.pos < 0 || static_cast<int64_t>(s.pos) + static_cast<int64_t>(s.tokens.size()) >
                         o.ctx_per_slot) {
      return absl::OutOfRangeError(absl::StrCat(
          "chunk ", i, ": positions ", s.pos, "..", s.pos + s.tokens.size() - 1,
          " exceed the slot context of ", o.ctx_per_slot));
    }
    for (int32_t t : s.tokens) {
      if (t < 0 || t >= c.n_vocab) {
        return absl::InvalidArgumentError(absl::StrCat("chunk ", i, ": token id ", t,
                                                       " is outside the vocabulary of ",
                                                       c.n_vocab));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateSampleSpecs(std::span<const SeqChunk> batch,
                                 std::span<const SampleSpec> specs) {
  if (specs.size() != batch.size()) {
    return absl::InvalidArgumentError("ForwardSample: one SampleSpec per chunk");
  }
  for (const SeqChunk& c : batch) {
    if (c.all_logits) return absl::InvalidArgumentError("ForwardSample: all_logits is not allowed");
  }
  for (const SampleSpec& sp : specs) {
    if (sp.params == nullptr) return absl::InvalidArgumentError("ForwardSample: null params");
  }
  return absl::OkStatus();
}

absl::Status Backend::ForwardSample(std::span<const SeqChunk> batch,
                                    std::span<const SampleSpec> specs,
                                    std::vector<SampleResult>* out) {
  RETURN_IF_ERROR(ValidateSampleSpecs(batch, specs));
  thread_local ForwardOutput logits;
  thread_local SamplerScratch scratch;
  RETURN_IF_ERROR(Forward(batch, &logits));
  const size_t n_vocab = static_cast<size_t>(config().n_vocab);
  out->resize(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    (*out)[i] = Sample({logits.logits.data() + i * n_vocab, n_vocab}, *specs[i].params,
                       specs[i].history, specs[i].stream, specs[i].step, &scratch);
  }
  return absl::OkStatus();
}

}  // namespace m40llm
