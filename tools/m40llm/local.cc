// Local (in-process) model use shared by the CLI subcommands (see local.h).
#include "tools/m40llm/local.h"

#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "engine/demo_model.h"
#include "engine/status.h"
#include "spdlog/spdlog.h"

namespace m40llm {

void AddModelOpts(CLI::App* app, ModelOpts* o) {
  app->add_option("-m,--model", o->model,
                  "GGUF model file (default: the built-in demo model, random weights)");
  app->add_option("-t,--threads", o->threads, "CPU threads (default: all cores)");
  app->add_option("-c,--ctx", o->ctx,
                  "context positions to allocate (default: min(model context, 4096))");
  app->add_option("--backend", o->backend, "compute backend: cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  app->add_option("--device", o->device, "CUDA device ordinal (--backend cuda)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--weights", o->weights,
                  "native: quantised matrices stay in their blocks (cpu); f16: dequantised to "
                  "FP16 at load")
      ->check(CLI::IsMember({"native", "f16"}))
      ->capture_default_str();
}

absl::StatusOr<std::unique_ptr<GgufFile>> OpenModelFile(const ModelOpts& o) {
  std::string path = o.model;
  if (path.empty()) {
    ASSIGN_OR_RETURN(path, EnsureDemoModel());
    std::fprintf(stderr,
                 "note: no --model given; using the built-in demo model %s.\n"
                 "      Its weights are random, so its text is gibberish.\n",
                 path.c_str());
  }
  return GgufFile::Open(path);
}

absl::StatusOr<LoadedBackend> LoadEngine(const GgufFile& f, const ModelOpts& o, int need_ctx) {
  ASSIGN_OR_RETURN(const ModelConfig c, ReadModelConfig(f));
  BackendSpec spec;
  spec.kind = o.backend;
  spec.device = o.device;
  ASSIGN_OR_RETURN(spec.weights, ParseWeightFormat(o.weights));
  spec.options.max_slots = 1;
  spec.options.n_threads = o.threads;
  spec.options.ctx_per_slot = o.ctx > 0 ? o.ctx : std::min(c.n_ctx_train, 4096);
  if (o.ctx <= 0 && need_ctx > spec.options.ctx_per_slot) {
    spec.options.ctx_per_slot = std::min(need_ctx, c.n_ctx_train);
  }
  // A \r progress line, for models over 64 MiB, and only on a terminal.
  const bool show = f.size() > (64u << 20) && isatty(STDERR_FILENO) != 0;
  auto t0 = Clock::now();
  int last_pct = -1;
  ProgressFn progress = [&](const LoadProgress& p) {
    if (!show || p.bytes_total == 0) return;
    const int pct = static_cast<int>(100 * p.bytes_done / p.bytes_total);
    if (pct == last_pct) return;
    last_pct = pct;
    std::fprintf(stderr, "\rloading %s: %3d%% (%.0f MiB)", f.path().c_str(), pct,
                 static_cast<double>(p.bytes_done) / (1 << 20));
    std::fflush(stderr);
  };
  auto e = LoadBackend(f, spec, progress);
  if (show) std::fprintf(stderr, "\n");
  if (e.ok()) {
    spdlog::info("loaded {} in {:.2f} s: {} layers, n_embd {}, vocab {}, {:.1f} MiB of weights on {}",
                 f.path(), Seconds(t0, Clock::now()), c.n_layer, c.n_embd, c.n_vocab,
                 static_cast<double>(e->weight_bytes) / (1 << 20), e->backend->device());
  }
  return e;
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
  return 1;
}

void AddSamplingOpts(CLI::App* app, SamplingParams* p) {
  app->add_option("--temperature,--temp", p->temperature, "0 = greedy")->capture_default_str();
  app->add_option("--top-k", p->top_k, "keep the k most likely tokens (0 = off)")
      ->capture_default_str();
  app->add_option("--top-p", p->top_p, "nucleus sampling mass (1 = off)")->capture_default_str();
  app->add_option("--min-p", p->min_p, "drop tokens below min-p x the top probability")
      ->capture_default_str();
  app->add_option("--repeat-penalty", p->repetition_penalty, "repetition penalty (1 = off)")
      ->capture_default_str();
  app->add_option("--presence-penalty", p->presence_penalty)->capture_default_str();
  app->add_option("--frequency-penalty", p->frequency_penalty)->capture_default_str();
  app->add_option("--penalty-last-n", p->penalty_last_n,
                  "tokens the penalties look back over (-1 = all)")
      ->capture_default_str();
  app->add_option("--seed", p->seed, "sampling seed")->capture_default_str();
}

absl::StatusOr<std::string> ReadFileOrStdin(const std::string& path) {
  if (path == "-") {
    return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

absl::StatusOr<std::string> ReadPromptArg(const std::string& prompt, const std::string& file) {
  if (!file.empty()) return ReadFileOrStdin(file);
  if (prompt == "-") return ReadFileOrStdin("-");
  return prompt;
}

absl::StatusOr<LocalGenerationResult> GenerateLocally(Backend& backend, const Tokenizer& tok,
                                                      const std::vector<int32_t>& ids, int cached,
                                                      const LocalGeneration& g,
                                                      IncrementalDetokenizer* detok,
                                                      const std::function<void(const std::string&)>& on_text) {
  RETURN_IF_ERROR(g.sampling.Validate(backend.config().n_vocab));
  const int ctx = backend.options().ctx_per_slot;
  if (static_cast<int>(ids.size()) + g.max_tokens > ctx) {
    return absl::OutOfRangeError(absl::StrCat("prompt (", ids.size(), " tokens) + max tokens (",
                                              g.max_tokens, ") exceeds the context of ", ctx,
                                              " positions"));
  }
  cached = std::clamp(cached, 0, static_cast<int>(ids.size()) - 1);
  LocalGenerationResult r;
  SamplerScratch scratch;
  ForwardOutput out;
  const auto t0 = Clock::now();
  const std::vector<int32_t> fresh(ids.begin() + cached, ids.end());
  SeqChunk prefill{0, cached, fresh, false};
  RETURN_IF_ERROR(backend.Forward({&prefill, 1}, &out));
  r.prompt_tokens = static_cast<int>(ids.size());
  r.prefilled_tokens = static_cast<int>(fresh.size());
  const auto t1 = Clock::now();
  std::vector<int32_t> history = ids;
  for (int step = 0; step < g.max_tokens; ++step) {
    if (g.stop != nullptr && g.stop->load()) {
      r.finish = "interrupted";
      break;
    }
    SampleResult s = Sample(out.logits, g.sampling, history, 0, step, &scratch);
    history.push_back(s.token);
    if (!g.ignore_eos && tok.IsEog(s.token)) {
      r.finish = "stop";
      break;
    }
    r.tokens.push_back(s.token);
    if (on_text) on_text(detok->Push(s.token));
    if (step + 1 == g.max_tokens) break;
    SeqChunk dec{0, static_cast<int>(history.size()) - 1, {&history.back(), 1}, false};
    RETURN_IF_ERROR(backend.Forward({&dec, 1}, &out));
  }
  if (on_text) on_text(detok->Flush());
  const auto t2 = Clock::now();
  r.prefill_seconds = Seconds(t0, t1);
  r.decode_seconds = Seconds(t1, t2);
  return r;
}

namespace {
std::atomic<bool>* g_interrupt_flag = nullptr;

void OnInterrupt(int) {
  if (g_interrupt_flag != nullptr) g_interrupt_flag->store(true);
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C ends the process
}
}  // namespace

InterruptToFlag::InterruptToFlag(std::atomic<bool>* flag) {
  g_interrupt_flag = flag;
  std::signal(SIGINT, OnInterrupt);
}

InterruptToFlag::~InterruptToFlag() {
  std::signal(SIGINT, SIG_DFL);
  g_interrupt_flag = nullptr;
}

void PrintGenerationStats(const LocalGenerationResult& r) {
  const int n = static_cast<int>(r.tokens.size()) + (r.finish == "stop" ? 1 : 0);
  std::fprintf(stderr,
               "prompt: %d tokens in %.3f s (%.1f tok/s); decode: %d tokens in %.3f s "
               "(%.1f tok/s); finish: %s\n",
               r.prefilled_tokens, r.prefill_seconds,
               r.prefilled_tokens / std::max(r.prefill_seconds, 1e-9), n, r.decode_seconds,
               n / std::max(r.decode_seconds, 1e-9), r.finish.c_str());
}

}  // namespace m40llm
