// `m40llm bench` (see bench.h).
#include "tools/m40llm/bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/bench_json.h"
#include "engine/demo_model.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/status.h"
#include "nlohmann/json.hpp"
#include "server/backend_loader.h"
#if M40LLM_HAVE_YARDSTICK
#include "bench/gpu_yardstick.h"
#endif

namespace m40llm {
namespace {

using Clock = std::chrono::steady_clock;

double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

std::vector<int32_t> RandomTokens(int n, int n_vocab, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> d(0, n_vocab - 1);
  std::vector<int32_t> t(n);
  for (int32_t& v : t) v = d(rng);
  return t;
}

// The model file: --model, or the preset written (once) under preset_dir.
absl::StatusOr<std::string> ModelPath(const BenchOptions& o) {
  if (!o.model.empty()) return o.model;
  if (o.preset.empty()) return absl::InvalidArgumentError("give --model or --preset");
  ASSIGN_OR_RETURN(RandomModelSpec spec, RandomModelPreset(o.preset));
  spec.threads = o.threads;
  const std::string path = o.preset_dir + "/" + o.preset + ".gguf";
  if (std::filesystem::exists(path)) return path;
  std::filesystem::create_directories(o.preset_dir);
  std::fprintf(stderr, "writing %s (random weights) ...\n", path.c_str());
  const auto t0 = Clock::now();
  const std::string tmp = path + ".partial";
  RETURN_IF_ERROR(WriteRandomLlama(spec, tmp));
  std::filesystem::rename(tmp, path);
  std::fprintf(stderr, "wrote %s in %.1f s\n", path.c_str(), Ms(t0, Clock::now()) / 1e3);
  return path;
}

struct DecodeRow {
  int batch = 0;
  double ms_per_step = 0;
  double tok_per_s = 0;
  double weight_gbs = 0;  // weight bytes per step / step time
};

}  // namespace

void AddBenchOptions(CLI::App* b, BenchOptions* o) {
  b->add_option("-m,--model", o->model, "GGUF model to measure");
  b->add_option("--preset", o->preset,
                "or a random-weight model of a real shape, written to --preset-dir when "
                "absent: tinyllama-1.1b or llama2-7b");
  b->add_option("--preset-dir", o->preset_dir, "where --preset models are written")
      ->capture_default_str();
  b->add_option("--backend", o->backend, "cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  b->add_option("--device", o->device, "CUDA device ordinal")->capture_default_str();
  b->add_option("-t,--threads", o->threads, "CPU threads (cpu backend, model writing)");
  b->add_option("--batches", o->batches, "decode batch sizes")->delimiter(',')->capture_default_str();
  b->add_option("--context", o->context, "positions in each slot before decode is timed")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  b->add_option("--steps", o->steps, "timed decode steps per batch size")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  b->add_option("--prefill", o->prefill, "prompt tokens for the prefill measurement (0: skip)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  b->add_option("--reps", o->reps, "prefill repetitions (median)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  b->add_option("--max-tokens-per-pass", o->max_tokens_per_pass,
                "cuda: tokens per forward pass")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  b->add_flag("!--no-kernels", o->kernels, "skip the kernel yardstick (cuBLAS comparison)");
  b->add_option("--json", o->json, "JSON output path")->capture_default_str();
}

int RunBench(const BenchOptions& o) {
  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
    return 1;
  };
  auto path = ModelPath(o);
  if (!path.ok()) return fail(path.status());
  auto file = GgufFile::Open(*path);
  if (!file.ok()) return fail(file.status());
  auto cfg = ReadModelConfig(**file);
  if (!cfg.ok()) return fail(cfg.status());
  const ModelConfig& c = *cfg;
  const int max_batch = o.batches.empty() ? 1 : *std::max_element(o.batches.begin(), o.batches.end());
  if (max_batch < 1) return fail(absl::InvalidArgumentError("--batches must be positive"));

  BackendSpec spec;
  spec.kind = o.backend;
  spec.device = o.device;
  spec.max_tokens_per_pass = o.max_tokens_per_pass;
  spec.options.max_slots = max_batch;
  spec.options.ctx_per_slot = std::max(o.prefill, o.context + o.steps) + 8;
  spec.options.n_threads = o.threads;
  const auto t_load = Clock::now();
  auto engine = LoadBackend(**file, spec);
  if (!engine.ok()) return fail(engine.status());
  const double load_s = Ms(t_load, Clock::now()) / 1e3;
  Backend& be = *engine->backend;

  // Weight bytes a decode step streams: every layer matrix and the LM head
  // (the embedding rows it gathers are negligible). FP16 storage.
  const uint64_t per_layer = static_cast<uint64_t>(c.n_embd) *
                             (2ull * c.q_dim() + 2ull * c.kv_dim() + 3ull * c.n_ff) * 2;
  const uint64_t step_bytes = per_layer * c.n_layer + 2ull * c.n_vocab * c.n_embd;

  nlohmann::json j;
  j["model"] = *path;
  j["backend"] = be.name();
  j["device"] = be.device();
  j["shape"] = {{"n_embd", c.n_embd}, {"n_layer", c.n_layer}, {"n_head", c.n_head},
                {"n_head_kv", c.n_head_kv}, {"n_ff", c.n_ff}, {"n_vocab", c.n_vocab}};
  j["weight_bytes"] = engine->weight_bytes;
  j["weight_bytes_per_step"] = step_bytes;
  j["load_seconds"] = load_s;
  const char* graphs_env = std::getenv("M40LLM_CUDA_GRAPHS");
  j["cuda_decode_graphs"] = graphs_env == nullptr || std::atoi(graphs_env) != 0;
  std::printf("model %s on %s (%s backend), loaded in %.1f s\n", path->c_str(),
              be.device().c_str(), be.name().c_str(), load_s);
  std::printf("weights %.2f GiB; a decode step reads %.2f GiB of them\n",
              engine->weight_bytes / 1073741824.0, step_bytes / 1073741824.0);
  if (be.name() == "cuda") {
    std::printf("decode steps: %s (M40LLM_CUDA_GRAPHS)\n",
                j["cuda_decode_graphs"].get<bool>() ? "CUDA graphs" : "one launch per operation");
  }

  double copy_gbs = 0;
#if M40LLM_HAVE_YARDSTICK
  if (o.backend == "cuda") {
    auto copy = bench::MeasureCopyBandwidth();
    if (copy.ok()) {
      copy_gbs = copy->gbs;
      j["copy_gbs"] = copy_gbs;
      std::printf("device-to-device copy: %.0f GB/s (read + write)\n", copy_gbs);
    } else {
      std::fprintf(stderr, "copy bandwidth: %s\n", std::string(copy.status().message()).c_str());
    }
  }
#endif

  std::mt19937 rng(1234);
  ForwardOutput out;
  // Fill every slot with `context` positions (batched prefill, not timed).
  {
    std::vector<std::vector<int32_t>> prompts(max_batch);
    std::vector<SeqChunk> chunks;
    for (int s = 0; s < max_batch; ++s) {
      prompts[s] = RandomTokens(o.context, c.n_vocab, rng);
      chunks.push_back({s, 0, prompts[s], false});
    }
    if (auto s = be.Forward(chunks, &out); !s.ok()) return fail(s);
  }

  // Decode: each batch size starts from `context` positions and runs `steps`
  // steps (the first, untimed, warms up).
  std::vector<DecodeRow> rows;
  for (int b : o.batches) {
    std::vector<int32_t> toks = RandomTokens(b, c.n_vocab, rng);
    std::vector<SeqChunk> chunks(b);
    std::vector<double> times;
    for (int step = 0; step <= o.steps; ++step) {
      for (int s = 0; s < b; ++s) chunks[s] = {s, o.context + step, {&toks[s], 1}, false};
      const auto t0 = Clock::now();
      if (auto st = be.Forward(chunks, &out); !st.ok()) return fail(st);
      if (step > 0) times.push_back(Ms(t0, Clock::now()));
    }
    DecodeRow r;
    r.batch = b;
    r.ms_per_step = Median(times);
    r.tok_per_s = b / (r.ms_per_step / 1e3);
    r.weight_gbs = step_bytes / (r.ms_per_step / 1e3) / 1e9;
    rows.push_back(r);
  }

  // Prefill: one prompt of `prefill` tokens into slot 0, last logits only.
  double prefill_ms = 0;
  if (o.prefill > 0) {
    std::vector<double> times;
    const std::vector<int32_t> prompt = RandomTokens(o.prefill, c.n_vocab, rng);
    for (int rep = 0; rep <= o.reps; ++rep) {
      SeqChunk chunk{0, 0, prompt, false};
      const auto t0 = Clock::now();
      if (auto st = be.Forward({&chunk, 1}, &out); !st.ok()) return fail(st);
      if (rep > 0) times.push_back(Ms(t0, Clock::now()));
    }
    prefill_ms = Median(times);
  }

  std::printf("\n%-14s %6s %10s %10s %12s %10s\n", "phase", "batch", "ms/step", "tok/s",
              "weight GB/s", "% of copy");
  auto& jd = j["decode"] = nlohmann::json::array();
  for (const DecodeRow& r : rows) {
    const double frac = copy_gbs > 0 ? r.weight_gbs / copy_gbs : 0;
    const std::string pct = copy_gbs > 0 ? absl::StrFormat("%.1f%%", 100 * frac) : "-";
    std::printf("%-14s %6d %10.3f %10.1f %12.1f %10s\n", "decode", r.batch, r.ms_per_step,
                r.tok_per_s, r.weight_gbs, pct.c_str());
    jd.push_back({{"batch", r.batch}, {"ms_per_step", r.ms_per_step}, {"tok_per_s", r.tok_per_s},
                  {"weight_gbs", r.weight_gbs}, {"fraction_of_copy", frac},
                  {"context", o.context}});
  }
  if (o.prefill > 0) {
    const double tps = o.prefill / (prefill_ms / 1e3);
    const double tflops = 2.0 * (step_bytes / 2.0) * o.prefill / (prefill_ms / 1e3) / 1e12;
    std::printf("%-14s %6d %10.3f %10.1f %12s %10s   (%.2f TFLOP/s in the matmuls)\n",
                absl::StrCat("prefill ", o.prefill).c_str(), 1, prefill_ms, tps, "-", "-", tflops);
    j["prefill"] = {{"tokens", o.prefill}, {"ms", prefill_ms}, {"tok_per_s", tps},
                    {"matmul_tflops", tflops}};
  }
  if (copy_gbs > 0) {
    // The floor: the step's weight bytes at the measured copy bandwidth.
    const double floor_ms = step_bytes / (copy_gbs * 1e9) * 1e3;
    std::printf("\nbandwidth floor of a decode step (weight bytes / copy bandwidth): %.3f ms\n",
                floor_ms);
    j["decode_floor_ms"] = floor_ms;
  }

#if M40LLM_HAVE_YARDSTICK
  if (o.backend == "cuda" && o.kernels) {
    // The model's matrix shapes through our product kernels beside cuBLAS on
    // FP32 copies: the skinny kernel at one token (decode) and the GEMM at
    // the prefill length. A yardstick only; cuBLAS is never on the product
    // path.
    struct Shape {
      const char* name;
      int64_t rows, cols;
    };
    std::vector<Shape> shapes = {{"attn_q/o", c.q_dim(), c.n_embd},
                                 {"attn_k/v", c.kv_dim(), c.n_embd},
                                 {"ffn_gate/up", c.n_ff, c.n_embd},
                                 {"ffn_down", c.n_embd, c.n_ff},
                                 {"lm_head", c.n_vocab, c.n_embd}};
    const int64_t gemm_tok = std::max(o.prefill, 1);
    std::printf("\nkernel yardstick (our FP16-weight kernels; cuBLAS SGEMV/SGEMM on FP32 copies)\n");
    std::printf("%-12s %11s %10s %9s %12s | %8s %9s %12s %8s\n", "matrix", "rows x cols",
                "matvec GB/s", "% of copy", "cuBLAS GB/s", "GEMM tok", "TFLOP/s",
                "cuBLAS TFLOP", "% cuBLAS");
    auto& jk = j["kernels"] = nlohmann::json::array();
    for (const Shape& sh : shapes) {
      auto bench = bench::ProductBench::Create(sh.rows, sh.cols, gemm_tok);
      if (!bench.ok()) {
        std::fprintf(stderr, "%s: %s\n", sh.name, std::string(bench.status().message()).c_str());
        continue;
      }
      auto mv = (*bench)->MatVec(1);
      auto gm = (*bench)->Gemm(gemm_tok);
      if (!mv.ok() || !gm.ok()) {
        std::fprintf(stderr, "%s: %s\n", sh.name,
                     std::string((!mv.ok() ? mv.status() : gm.status()).message()).c_str());
        continue;
      }
      const double frac = copy_gbs > 0 ? mv->weight_gbs / copy_gbs : 0;
      const double vs = gm->cublas_tflops > 0 ? gm->tflops / gm->cublas_tflops : 0;
      std::printf("%-12s %5ld x %-5ld %10.0f %8.1f%% %12.0f | %8ld %9.2f %12.2f %7.1f%%\n",
                  sh.name, static_cast<long>(sh.rows), static_cast<long>(sh.cols),
                  mv->weight_gbs, 100 * frac, mv->cublas_weight_gbs, static_cast<long>(gemm_tok),
                  gm->tflops, gm->cublas_tflops, 100 * vs);
      jk.push_back({{"matrix", sh.name}, {"rows", sh.rows}, {"cols", sh.cols},
                    {"matvec_ms", mv->ms}, {"matvec_weight_gbs", mv->weight_gbs},
                    {"matvec_fraction_of_copy", frac}, {"cublas_routine", mv->cublas_routine},
                    {"cublas_matvec_weight_gbs", mv->cublas_weight_gbs},
                    {"gemm_tokens", gemm_tok}, {"gemm_ms", gm->ms}, {"gemm_tflops", gm->tflops},
                    {"cublas_gemm_tflops", gm->cublas_tflops}, {"gemm_fraction_of_cublas", vs}});
    }
  }
#endif

  std::printf("\n");
  return bench::WriteJsonResult(o.json, j);
}

}  // namespace m40llm
