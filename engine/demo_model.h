// Deterministic random-weight llama models (`m40llm mkmodel`) and the
// built-in demo model used when no --model is given. Their weights are noise:
// generated text is gibberish by construction.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "engine/ggml_types.h"

namespace m40llm {

struct RandomModelSpec {
  std::string name = "m40llm-random";
  int n_embd = 256;
  int n_layer = 4;
  int n_head = 8;
  int n_head_kv = 4;
  int n_ff = 768;
  int n_ctx = 2048;
  float rope_freq_base = 10000.0f;
  float rope_scale_linear = 1.0f;  // > 1 writes linear RoPE scaling
  bool rope_freqs = false;         // write a Llama 3 style rope_freqs.weight
  float rms_eps = 1e-5f;
  GgmlType weight_type = GgmlType::kF16;  // for the 2-D matrices
  bool tied_output = false;               // omit output.weight
  uint64_t seed = 1;
};

// Writes a llama GGUF with the project's demo vocabulary and weights drawn
// from a counter-based generator keyed by `seed` (same spec => same bytes).
absl::Status WriteRandomLlama(const RandomModelSpec& spec, const std::string& path);

// The cache folder: $M40LLM_CACHE_DIR, else $XDG_CACHE_HOME/m40llm, else
// $HOME/.cache/m40llm.
std::string CacheDir();

// Path of the built-in demo model, writing it on first use.
absl::StatusOr<std::string> EnsureDemoModel();

}  // namespace m40llm
