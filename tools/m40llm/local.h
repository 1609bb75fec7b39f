// Local (in-process) model use shared by the CLI subcommands: the model
// options, loading a model into a backend, the sampling flags, prompts from
// files and standard input, and one sequence's generation loop.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/gguf.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"
#include "server/backend_loader.h"

namespace m40llm {

using Clock = std::chrono::steady_clock;

inline double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Options shared by the subcommands that load a model.
struct ModelOpts {
  std::string model;
  int threads = 0;
  int ctx = 0;
  std::string backend = "cpu";
  int device = 0;
  std::string weights = "native";
};

void AddModelOpts(CLI::App* app, ModelOpts* o);

// Resolves --model (the demo model when empty, said on stderr) and opens it.
absl::StatusOr<std::unique_ptr<GgufFile>> OpenModelFile(const ModelOpts& o);

// Loads the weights into the backend --backend names (a progress line on
// stderr for models over 64 MiB), one slot of enough context for `need_ctx`
// positions unless --ctx fixes it.
absl::StatusOr<LoadedBackend> LoadEngine(const GgufFile& f, const ModelOpts& o, int need_ctx);

// Prints "error: <message>" to stderr; returns 1.
int Fail(const absl::Status& s);

// --temperature, --top-k, --top-p, --min-p, the penalties and --seed.
void AddSamplingOpts(CLI::App* app, SamplingParams* p);

// The whole of file `path`, or of standard input for "-"; NotFound naming
// the path when it cannot be read.
absl::StatusOr<std::string> ReadFileOrStdin(const std::string& path);

// The prompt of -f FILE, or of --prompt (standard input for "-").
absl::StatusOr<std::string> ReadPromptArg(const std::string& prompt, const std::string& file);

struct LocalGeneration {
  SamplingParams sampling;
  int max_tokens = 128;
  bool ignore_eos = false;
  // Checked before every token: when it turns true the generation ends
  // (finish "interrupted") and its stats are still reported.
  const std::atomic<bool>* stop = nullptr;
};

// Until the returned guard is destroyed, SIGINT (Ctrl-C) sets `*flag`
// instead of killing the process; a second SIGINT kills it as usual.
class InterruptToFlag {
 public:
  explicit InterruptToFlag(std::atomic<bool>* flag);
  ~InterruptToFlag();
  InterruptToFlag(const InterruptToFlag&) = delete;
  InterruptToFlag& operator=(const InterruptToFlag&) = delete;
};

struct LocalGenerationResult {
  std::vector<int32_t> tokens;  // generated, the end-of-generation token excluded
  std::string finish = "length";  // or "stop", "interrupted"
  int prompt_tokens = 0;
  int prefilled_tokens = 0;  // those not already in the KV cache
  double prefill_seconds = 0, decode_seconds = 0;
};

// Runs `ids` on slot 0, whose KV already holds the first `cached` of them
// (kept when they are unchanged: a chat's earlier turns), then samples up to
// g.max_tokens tokens, stopping at an end-of-generation token unless
// g.ignore_eos. Streams text through `detok` to `on_text` (may be null).
absl::StatusOr<LocalGenerationResult> GenerateLocally(
    Backend& backend, const Tokenizer& tok, const std::vector<int32_t>& ids, int cached,
    const LocalGeneration& g, IncrementalDetokenizer* detok,
    const std::function<void(const std::string&)>& on_text);

// "prompt: N tokens in S s (...); decode: ...; finish: F" on stderr.
void PrintGenerationStats(const LocalGenerationResult& r);

}  // namespace m40llm
