// The interface every compute backend (CPU reference, CUDA) implements: run
// the model over a batch of sequence chunks that share one KV cache.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/model.h"
#include "engine/sampler.h"

namespace m40llm {

struct BackendOptions {
  int max_slots = 1;       // sequences that can hold KV at once
  int ctx_per_slot = 0;    // positions per slot; 0 => the model's n_ctx_train
  int n_threads = 0;       // CPU threads; <= 0 => all hardware threads
};

// Tokens `tokens` of the sequence in `slot`, at positions pos .. pos+n-1.
// Positions before `pos` must already hold KV from earlier calls. Prefill is
// a chunk of many tokens; decode is a chunk of one.
struct SeqChunk {
  int slot = 0;
  int pos = 0;
  std::span<const int32_t> tokens;
  bool all_logits = false;  // logits for every token, else the last only
};

struct ForwardOutput {
  // Logit rows, (rows, n_vocab): for each chunk in order, one row per token
  // when all_logits, else one row for its last token.
  std::vector<float> logits;
  int64_t rows = 0;
};

// How to sample the token after one chunk in ForwardSample: the arguments of
// m40llm::Sample() other than the logits.
struct SampleSpec {
  const SamplingParams* params = nullptr;  // validated for the model's vocabulary
  std::span<const int32_t> history;        // the sequence so far, prompt included
  uint64_t stream = 0;
  uint64_t step = 0;                       // generated-token index of this token
};

// Checks a batch against the model and options; used by every backend.
absl::Status ValidateBatch(const ModelConfig& c, const BackendOptions& o,
                           std::span<const SeqChunk> batch);

// Checks ForwardSample's extra arguments: one spec with params per chunk and
// no chunk asking for all its logits.
absl::Status ValidateSampleSpecs(std::span<const SeqChunk> batch,
                                 std::span<const SampleSpec> specs);

// Memory a backend holds, in bytes, and the memory of the device it runs
// on (host RAM for the CPU backend). device_* are 0 when unknown.
struct BackendMemory {
  uint64_t weights = 0;
  uint64_t kv_cache = 0;
  uint64_t scratch = 0;
  uint64_t device_used = 0;
  uint64_t device_total = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const ModelConfig& config() const = 0;
  virtual const BackendOptions& options() const = 0;
  virtual std::string name() const = 0;
  // Validates the batch (slots, positions, token ids, context bounds, no slot
  // twice) and runs it. Errors leave the KV of untouched slots intact. Safe to
  // call from several threads (prefill and decode) for disjoint slots.
  virtual absl::Status Forward(std::span<const SeqChunk> batch, ForwardOutput* out) = 0;
  // A forward pass that samples the token after each chunk (whose all_logits
  // must be false) with specs[i], exactly as Sample() would on Forward's
  // logits; out[i] is chunk i's result. The default runs Forward and
  // samples on the host; a GPU backend samples on the device and copies
  // back only the tokens.
  virtual absl::Status ForwardSample(std::span<const SeqChunk> batch,
                                     std::span<const SampleSpec> specs,
                                     std::vector<SampleResult>* out);
  // OK while the backend can run; after a fault it cannot recover from (a
  // sticky device error), the error, which every later Forward also returns.
  virtual absl::Status health() const { return absl::OkStatus(); }
  // Where it runs, for logs and GetModelInfo ("CPU, 2 threads",
  // "CUDA device 0: NVIDIA H100 80GB HBM3, 79.1 GiB").
  virtual std::string device() const { return name(); }
  // Current memory figures; cheap enough to call a few times a second.
  virtual BackendMemory memory() const { return {}; }
};

}  // namespace m40llm
