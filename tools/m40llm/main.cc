// m40llm: one binary for every job. Subcommands: generate, eval, tokenize,
// mkmodel, info, bench, chat, chat-template, serve (the gRPC server) and
// client (talks to one).
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/demo_model.h"
#include "engine/eval.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "engine/status.h"
#include "engine/tokenizer.h"
#include "nlohmann/json.hpp"
#include "server/backend_loader.h"
#include "server/server.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"
#include "tools/m40llm/bench.h"
#include "tools/m40llm/chat.h"
#include "tools/m40llm/client.h"
#include "tools/m40llm/local.h"

namespace m40llm {
namespace {

// ---- generate ---------------------------------------------------------------

struct GenerateOpts {
  ModelOpts model;
  std::string prompt;       // "-": standard input
  std::string prompt_file;  // -f
  int max_tokens = 128;
  bool special = false;
  bool ignore_eos = false;
  SamplingParams sampling;
};

int RunGenerate(GenerateOpts& o) {
  auto prompt = ReadPromptArg(o.prompt, o.prompt_file);
  if (!prompt.ok()) return Fail(prompt.status());
  auto file = OpenModelFile(o.model);
  if (!file.ok()) return Fail(file.status());
  auto tok = Tokenizer::FromGguf(**file);
  if (!tok.ok()) return Fail(tok.status());
  if (o.max_tokens < 0) return Fail(absl::InvalidArgumentError("--max-tokens must be >= 0"));

  std::vector<int32_t> ids = (*tok)->Encode(*prompt, /*add_special=*/true, o.special);
  if (ids.empty()) return Fail(absl::InvalidArgumentError("the prompt is empty"));
  auto engine = LoadEngine(**file, o.model, static_cast<int>(ids.size()) + o.max_tokens);
  if (!engine.ok()) return Fail(engine.status());

  IncrementalDetokenizer detok(**tok);
  // Echo the prompt as the tokenizer sees it, then stream the continuation.
  for (int32_t id : ids) std::fputs(detok.Push(id).c_str(), stdout);
  std::fflush(stdout);
  LocalGeneration g;
  g.sampling = o.sampling;
  g.max_tokens = o.max_tokens;
  g.ignore_eos = o.ignore_eos;
  // Ctrl-C ends the generation, not the process: the text so far and the
  // stats are still printed.
  std::atomic<bool> interrupted{false};
  InterruptToFlag on_ctrl_c(&interrupted);
  g.stop = &interrupted;
  auto r = GenerateLocally(*engine->backend, **tok, ids, /*cached=*/0, g, &detok,
                           [](const std::string& text) {
                             std::fputs(text.c_str(), stdout);
                             std::fflush(stdout);
                           });
  std::fputs("\n", stdout);
  std::fflush(stdout);  // the text ends before the stats begin
  if (!r.ok()) return Fail(r.status());
  PrintGenerationStats(*r);
  return 0;
}

// ---- eval -------------------------------------------------------------------

struct EvalOpts {
  ModelOpts model;
  std::string prompt;
  std::string tokens;
  int n = 32;
  bool json = false;
};

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& s) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipWhitespace())) {
    int32_t v;
    if (!absl::SimpleAtoi(part, &v)) {
      return absl::InvalidArgumentError(absl::StrCat("not a token id: '", part, "'"));
    }
    ids.push_back(v);
  }
  if (ids.empty()) return absl::InvalidArgumentError("--tokens lists no token ids");
  return ids;
}

int RunEval(EvalOpts& o) {
  auto file = OpenModelFile(o.model);
  if (!file.ok()) return Fail(file.status());
  std::vector<int32_t> ids;
  if (!o.tokens.empty()) {
    auto parsed = ParseIds(o.tokens);
    if (!parsed.ok()) return Fail(parsed.status());
    ids = *parsed;
  } else {
    auto tok = Tokenizer::FromGguf(**file);
    if (!tok.ok()) return Fail(tok.status());
    ids = (*tok)->Encode(o.prompt, /*add_special=*/true, /*parse_special=*/true);
  }
  auto engine = LoadEngine(**file, o.model, static_cast<int>(ids.size()) + o.n);
  if (!engine.ok()) return Fail(engine.status());
  auto r = RunGreedyEval(*engine->backend, ids, o.n);
  if (!r.ok()) return Fail(r.status());
  if (!o.json) {
    std::printf("prompt tokens: %zu\n", r->prompt_tokens.size());
    for (const TopChoice& g : r->greedy) std::printf("%d (margin %.4f)\n", g.token, g.margin);
    return 0;
  }
  nlohmann::json j;
  j["prompt_tokens"] = r->prompt_tokens;
  j["n_vocab"] = engine->backend->config().n_vocab;
  j["backend"] = engine->backend->name();
  j["device"] = engine->backend->device();
  auto& top = j["prompt_top1"] = nlohmann::json::array();
  for (size_t p = 0; p < r->prompt_top1.size(); ++p) {
    const TopChoice& c = r->prompt_top1[p];
    top.push_back({{"pos", p}, {"token", c.token}, {"logit", c.logit}, {"margin", c.margin}});
  }
  j["last_logits"] = r->last_logits;
  auto& greedy = j["greedy"] = nlohmann::json::array();
  for (const TopChoice& c : r->greedy) greedy.push_back({{"token", c.token}, {"margin", c.margin}});
  std::cout << j.dump() << "\n";
  return 0;
}

// ---- tokenize ---------------------------------------------------------------

struct TokenizeOpts {
  std::string model;
  std::string text;
  bool special = false;
  bool no_add_special = false;
  bool json = false;
};

int RunTokenize(TokenizeOpts& o) {
  ModelOpts mo;
  mo.model = o.model;
  auto file = OpenModelFile(mo);
  if (!file.ok()) return Fail(file.status());
  auto tok = Tokenizer::FromGguf(**file);
  if (!tok.ok()) return Fail(tok.status());
  std::vector<int32_t> ids = (*tok)->Encode(o.text, !o.no_add_special, o.special);
  if (o.json) {
    nlohmann::json j;
    j["tokens"] = ids;
    std::cout << j.dump() << "\n";
  } else {
    for (int32_t id : ids) {
      std::printf("%6d  '%s'\n", id, (*tok)->TokenText(id).c_str());
    }
  }
  return 0;
}

// ---- mkmodel ----------------------------------------------------------------

struct MkmodelOpts {
  std::string out;
  std::string type = "f16";
  std::string preset;
  RandomModelSpec spec;
  // The flags a preset sets, so that ones given explicitly override it.
  std::vector<std::pair<CLI::Option*, int RandomModelSpec::*>> shape_flags;
  CLI::Option* name_flag = nullptr;
  CLI::Option* rope_base_flag = nullptr;
};

int RunMkmodel(MkmodelOpts& o) {
  bool found = false;
  for (uint32_t id = 0; id < 64 && !found; ++id) {
    auto t = TypeTraits(id);
    if (t && absl::EqualsIgnoreCase(Sv(t->name), o.type)) {
      o.spec.weight_type = static_cast<GgmlType>(id);
      found = true;
    }
  }
  if (!found) return Fail(absl::InvalidArgumentError(absl::StrCat("unknown type '", o.type, "'")));
  if (!o.preset.empty()) {
    // The preset replaces the shape and name; flags given explicitly win.
    auto p = RandomModelPreset(o.preset);
    if (!p.ok()) return Fail(p.status());
    for (const auto& [opt, field] : o.shape_flags) {
      if (opt->count() == 0) o.spec.*field = (*p).*field;
    }
    if (o.name_flag->count() == 0) o.spec.name = p->name;
    if (o.rope_base_flag->count() == 0) o.spec.rope_freq_base = p->rope_freq_base;
    o.spec.rms_eps = p->rms_eps;
  }
  const auto start = Clock::now();
  if (auto s = WriteRandomLlama(o.spec, o.out); !s.ok()) return Fail(s);
  std::fprintf(stderr, "wrote %s in %.1f s (random weights: generated text will be gibberish)\n",
               o.out.c_str(), Seconds(start, Clock::now()));
  return 0;
}

// ---- info -------------------------------------------------------------------

int RunInfo(const std::string& model) {
  ModelOpts mo;
  mo.model = model;
  auto file = OpenModelFile(mo);
  if (!file.ok()) return Fail(file.status());
  const GgufFile& f = **file;
  std::printf("file: %s\nGGUF version: %u, %zu metadata keys, %zu tensors, alignment %lu\n",
              f.path().c_str(), f.version(), f.metadata().size(), f.tensors().size(),
              static_cast<unsigned long>(f.alignment()));
  auto cfg = ReadModelConfig(f);
  if (!cfg.ok()) {
    std::printf("model config: %s\n", std::string(cfg.status().message()).c_str());
    return 1;
  }
  const ModelConfig& c = *cfg;
  std::printf(
      "architecture: %s  name: %s\nn_vocab %d  n_embd %d  n_layer %d  n_head %d  n_head_kv %d  "
      "head_dim %d  n_ff %d\ncontext %d  rope base %g scale %g n_rot %d%s  rms_eps %g\n"
      "output: %s\n",
      c.arch.c_str(), c.name.c_str(), c.n_vocab, c.n_embd, c.n_layer, c.n_head, c.n_head_kv,
      c.head_dim, c.n_ff, c.n_ctx_train, c.rope_freq_base, c.rope_freq_scale, c.n_rot,
      c.has_rope_freqs ? " (rope_freqs)" : "", c.rms_eps, c.tied_output ? "tied" : "separate");
  auto vocab = LoadVocab(f);
  if (!vocab.ok()) {
    std::printf("tokenizer: %s\n", std::string(vocab.status().message()).c_str());
    return 1;
  }
  const Vocab& v = *vocab;
  std::printf("tokenizer: %s%s%s  %zu tokens  bos %d  eos %d  eot %d  eom %d  unk %d  pad %d  "
              "add_bos %d  add_eos %d\n",
              v.model.c_str(), v.pre.empty() ? "" : " pre ", v.pre.c_str(), v.tokens.size(), v.bos,
              v.eos, v.eot, v.eom, v.unk, v.pad, v.add_bos, v.add_eos);
  return 0;
}

int Main(int argc, char** argv) {
  CLI::App app{"m40llm: GGUF LLM inference for the Tesla M40 and newer GPUs"};
  app.require_subcommand(1);
  app.set_version_flag("--version",
                       "m40llm " M40LLM_VERSION " (commit " M40LLM_GIT_COMMIT "), " M40LLM_BUILD_CUDA,
                       "print the version, the git commit and the CUDA build, and exit");
  std::string log_level = "warn";
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error|off")
      ->capture_default_str();

  GenerateOpts gen;
  auto* g = app.add_subcommand("generate", "stream a continuation of a prompt to stdout");
  AddModelOpts(g, &gen.model);
  auto* gp = g->add_option("-p,--prompt", gen.prompt, "prompt text; - reads it from standard input");
  auto* gf = g->add_option("-f,--file", gen.prompt_file, "read the prompt from this file");
  gp->excludes(gf);
  g->callback([&gen] {
    if (gen.prompt.empty() && gen.prompt_file.empty()) {
      throw CLI::RequiredError("--prompt or --file");
    }
  });
  g->add_option("-n,--max-tokens", gen.max_tokens, "tokens to generate")->capture_default_str();
  g->add_flag("--special", gen.special, "parse special tokens (e.g. <s>) in the prompt");
  g->add_flag("--ignore-eos", gen.ignore_eos, "keep going past end-of-sequence tokens");
  gen.sampling.temperature = 0.8f;
  AddSamplingOpts(g, &gen.sampling);

  EvalOpts ev;
  auto* e = app.add_subcommand("eval", "greedy evaluation with logits, as JSON");
  AddModelOpts(e, &ev.model);
  auto* ep = e->add_option("-p,--prompt", ev.prompt, "prompt text (BOS added, specials parsed)");
  auto* et = e->add_option("--tokens", ev.tokens, "comma-separated prompt token ids");
  ep->excludes(et);
  e->add_option("-n", ev.n, "greedy steps")->capture_default_str();
  e->add_flag("--json", ev.json,
              "print {prompt_tokens, prompt_top1, last_logits, greedy} as one JSON line");

  TokenizeOpts tk;
  auto* t = app.add_subcommand("tokenize", "print the token ids of a text");
  t->add_option("-m,--model", tk.model, "GGUF file (default: the demo model)");
  t->add_option("--text", tk.text, "text to tokenize")->required();
  t->add_flag("--special", tk.special, "parse special tokens in the text");
  t->add_flag("--no-add-special", tk.no_add_special, "do not add BOS/EOS");
  t->add_flag("--json", tk.json, "print {\"tokens\": [...]}");

  MkmodelOpts mk;
  auto* k = app.add_subcommand("mkmodel", "write a deterministic random-weight llama GGUF");
  k->add_option("-o,--out", mk.out, "output path")->required();
  k->add_option("--type", mk.type, "matrix type: f32 f16 bf16 q4_0 q4_1 q5_0 q5_1 q8_0 q2_k..q6_k")
      ->capture_default_str();
  k->add_option("--preset", mk.preset,
                "a real model's shape: tinyllama-1.1b (2048 embd, 22 layers, 32/4 heads, ff 5632, "
                "ctx 2048) or llama2-7b (4096, 32, 32/32, ff 11008, ctx 4096), both with a "
                "32000-token vocabulary; shape flags given too override it")
      ->check(CLI::IsMember(RandomModelPresetNames()));
  struct ShapeFlag {
    const char* flag;
    int RandomModelSpec::*field;
    const char* help;
  };
  const ShapeFlag shape[] = {
      {"--n-embd", &RandomModelSpec::n_embd, ""},
      {"--n-layer", &RandomModelSpec::n_layer, ""},
      {"--n-head", &RandomModelSpec::n_head, ""},
      {"--n-head-kv", &RandomModelSpec::n_head_kv, ""},
      {"--n-ff", &RandomModelSpec::n_ff, ""},
      {"--ctx", &RandomModelSpec::n_ctx, "context length"},
      {"--n-vocab", &RandomModelSpec::n_vocab,
       "vocabulary size: 0 = the 512-token demo vocabulary; larger pads it with <extra_ID> "
       "filler tokens"},
  };
  for (const ShapeFlag& f : shape) {
    mk.shape_flags.emplace_back(
        k->add_option(f.flag, mk.spec.*f.field, f.help)->capture_default_str(), f.field);
  }
  mk.rope_base_flag = k->add_option("--rope-base", mk.spec.rope_freq_base)->capture_default_str();
  k->add_option("--rope-scale", mk.spec.rope_scale_linear, "linear RoPE scaling factor")
      ->capture_default_str();
  k->add_flag("--rope-freqs", mk.spec.rope_freqs, "write Llama 3 style rope_freqs.weight");
  k->add_flag("--tied", mk.spec.tied_output, "no output.weight (tied to the embedding)");
  k->add_option("--arch", mk.spec.arch, "llama, or qwen2 (Q/K/V biases, NeoX RoPE)")
      ->check(CLI::IsMember({"llama", "qwen2"}));
  k->add_option("--seed", mk.spec.seed)->capture_default_str();
  mk.name_flag = k->add_option("--name", mk.spec.name)->capture_default_str();
  k->add_option("-t,--threads", mk.spec.threads,
                "threads generating the weights (default: all cores; the file does not depend "
                "on it)");

  std::string info_model;
  auto* in = app.add_subcommand("info", "print a GGUF file's model configuration");
  in->add_option("-m,--model", info_model, "GGUF file (default: the demo model)");

  BenchOptions bench;
  auto* bn = app.add_subcommand(
      "bench", "measure decode and prefill throughput on a model (table + JSON; not a test)");
  AddBenchOptions(bn, &bench);

  ServeOptions sv;
  auto* s = app.add_subcommand("serve", "run the gRPC inference server until SIGTERM/SIGINT");
  s->add_option("-m,--model", sv.model,
                "GGUF model file (default: the built-in demo model, random weights)")
      ->envname("M40LLM_MODEL");
  s->add_option("--backend", sv.backend, "compute backend: cpu or cuda")
      ->envname("M40LLM_BACKEND")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  s->add_option("--device", sv.device, "CUDA device ordinal (--backend cuda)")
      ->envname("M40LLM_DEVICE")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  s->add_option("--max-tokens-per-pass", sv.max_tokens_per_pass,
                "cuda: most tokens in one forward pass (sizes device scratch); longer "
                "prefills run in pieces")
      ->envname("M40LLM_MAX_TOKENS_PER_PASS")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  s->add_option("--listen", sv.listen, "gRPC address host:port")
      ->envname("M40LLM_LISTEN")
      ->capture_default_str();
  s->add_option("--metrics-listen", sv.metrics_listen,
                "Prometheus /metrics address host:port (empty: off)")
      ->envname("M40LLM_METRICS_LISTEN")
      ->capture_default_str();
  s->add_option("--max-batch", sv.max_batch, "sequences decoding at once")
      ->envname("M40LLM_MAX_BATCH")
      ->capture_default_str();
  s->add_option("--ctx-per-slot", sv.ctx_per_slot,
                "context positions per sequence, prompt + generated (0: min(model context, 2048))")
      ->envname("M40LLM_CTX_PER_SLOT")
      ->capture_default_str();
  s->add_option("--queue-size", sv.queue_size,
                "requests that may wait for a slot before RESOURCE_EXHAUSTED")
      ->envname("M40LLM_QUEUE_SIZE")
      ->capture_default_str();
  s->add_option("--drain-timeout", sv.drain_timeout_seconds,
                "seconds in-flight requests get to finish after SIGTERM")
      ->envname("M40LLM_DRAIN_TIMEOUT")
      ->capture_default_str();
  s->add_option("-t,--threads", sv.threads, "CPU threads (default: all cores)")
      ->envname("M40LLM_THREADS");
  s->add_option("--max-tokens-limit", sv.max_tokens_limit,
                "most tokens one request may generate; larger max_tokens are refused (0: no "
                "limit beyond the context)")
      ->envname("M40LLM_MAX_TOKENS_LIMIT")
      ->capture_default_str();
  s->add_option("--weights", sv.weights,
                "native: quantised matrices stay in their blocks (cpu; cuda dequantises to FP16 "
                "for now); f16: dequantised to FP16 at load")
      ->envname("M40LLM_WEIGHTS")
      ->check(CLI::IsMember({"native", "f16"}))
      ->capture_default_str();
  s->add_option("--chat-template", sv.chat_template,
                "Chat's template when a request names none: a family name (chatml, llama3, ...) "
                "or a file holding a template's text (default: the model's own)")
      ->envname("M40LLM_CHAT_TEMPLATE");
  s->add_option("--log-level", sv.log_level, "trace|debug|info|warn|error|critical|off")
      ->envname("M40LLM_LOG_LEVEL")
      ->capture_default_str();
  s->add_option("--log-format", sv.log_format, "text, or json (one object per line)")
      ->envname("M40LLM_LOG_FORMAT")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();

  ChatTemplateOpts ct;
  CLI::App* chat_template = AddChatTemplateCommand(&app, &ct);
  ChatOpts chat;
  CLI::App* chat_cmd = AddChatCommand(&app, &chat);

  ClientOpts cl;
  CLI::App* c = AddClientCommand(&app, &cl);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& err) {
    return app.exit(err);
  }
  // Logs go to stderr so that stdout carries only results (text, JSON).
  spdlog::set_default_logger(spdlog::stderr_color_mt("m40llm"));
  spdlog::set_level(spdlog::level::from_str(log_level));

  if (*g) return RunGenerate(gen);
  if (*e) {
    if (ev.prompt.empty() && ev.tokens.empty()) {
      return Fail(absl::InvalidArgumentError("eval needs --prompt or --tokens"));
    }
    return RunEval(ev);
  }
  if (*t) return RunTokenize(tk);
  if (*k) return RunMkmodel(mk);
  if (*in) return RunInfo(info_model);
  if (*bn) return RunBench(bench);
  if (*s) return RunServe(sv);
  if (*c) return RunClient(*c, cl);
  if (*chat_template) return RunChatTemplate(ct);
  if (*chat_cmd) return RunChat(chat);
  return 1;
}

}  // namespace
}  // namespace m40llm

int main(int argc, char** argv) { return m40llm::Main(argc, argv); }
