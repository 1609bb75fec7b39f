// Deterministic random-weight llama models (`m40llm mkmodel`) and the
// built-in demo model used when no --model is given. Their weights are noise:
// generated text is gibberish by construction.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/ggml_types.h"

namespace m40llm {

class GgufWriter;

struct RandomModelSpec {
  std::string name = "m40llm-random";
  // "llama", or "qwen2": Q/K/V biases (random, around 0) and NeoX RoPE.
  std::string arch = "llama";
  int n_embd = 256;
  int n_layer = 4;
  int n_head = 8;
  int n_head_kv = 4;
  int n_ff = 768;
  int n_ctx = 2048;
  // 0: the demo vocabulary (kDemoVocabSize tokens); larger: the demo
  // vocabulary padded with filler tokens to this size (see MakeDemoVocab).
  int n_vocab = 0;
  float rope_freq_base = 10000.0f;
  float rope_scale_linear = 1.0f;  // > 1 writes linear RoPE scaling
  bool rope_freqs = false;         // write a Llama 3 style rope_freqs.weight
  float rms_eps = 1e-5f;
  GgmlType weight_type = GgmlType::kF16;  // for the 2-D matrices
  bool tied_output = false;               // omit output.weight
  uint64_t seed = 1;
  // Threads generating the weights (0: one per hardware thread). The file's
  // bytes do not depend on it.
  int threads = 0;
  // Tests: adds metadata after the standard keys (it must not repeat one),
  // e.g. the odd keys real-world files carry.
  std::function<void(GgufWriter&)> extra_metadata;
};

// Writes a llama GGUF with the project's demo vocabulary and weights drawn
// from a counter-based generator keyed by `seed`: every value is a function
// of (seed, tensor, element), so the same spec gives the same bytes whatever
// `threads` is. The matrices are generated and quantised in row blocks on
// `threads` threads and streamed to the file, so memory use stays at a few
// MiB per thread whatever the model's size.
absl::Status WriteRandomLlama(const RandomModelSpec& spec, const std::string& path);

// The shape of a real model, for benchmarks on random weights:
//   tinyllama-1.1b: n_embd 2048, 22 layers, 32 heads, 4 KV heads, n_ff 5632,
//                   vocabulary 32000, context 2048;
//   llama2-7b:      n_embd 4096, 32 layers, 32 heads, 32 KV heads, n_ff 11008,
//                   vocabulary 32000, context 4096.
// Both have RoPE base 10000 and RMS epsilon 1e-5; the other fields keep
// their defaults (F16 matrices, seed 1). Unknown names are InvalidArgument,
// with the known ones listed.
absl::StatusOr<RandomModelSpec> RandomModelPreset(std::string_view name);

// The names RandomModelPreset() accepts.
std::vector<std::string> RandomModelPresetNames();

// The cache folder: $M40LLM_CACHE_DIR, else $XDG_CACHE_HOME/m40llm, else
// $HOME/.cache/m40llm.
std::string CacheDir();

// Path of the built-in demo model, writing it on first use.
absl::StatusOr<std::string> EnsureDemoModel();

}  // namespace m40llm
