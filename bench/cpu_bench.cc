// CPU engine benchmark: prefill and decode tokens/s for a GGUF model, printed
// as a table and written as JSON. A measurement, never a pass/fail test.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "bench/bench_json.h"
#include "engine/cpu_backend.h"
#include "engine/demo_model.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "nlohmann/json.hpp"

namespace m40llm {
namespace {

using Clock = std::chrono::steady_clock;

struct Row {
  std::string what;
  int batch;
  int tokens;
  double seconds;
  double tok_per_s() const { return tokens / seconds; }
};

std::vector<int32_t> Tokens(int n, int n_vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(3, n_vocab - 1);
  std::vector<int32_t> t(n);
  for (auto& v : t) v = d(rng);
  return t;
}

int Main(int argc, char** argv) {
  CLI::App app{"m40llm CPU benchmark: prefill and decode tokens/s"};
  std::string model_path, json_path = "cpu_bench.json";
  int threads = 0, prompt = 128, decode = 32, reps = 3;
  std::vector<int> batches = {1, 4};
  app.add_option("-m,--model", model_path,
                 "GGUF model (default: $M40LLM_FIXTURES/models/tiny-llama-f16.gguf, else the "
                 "demo model)");
  app.add_option("-t,--threads", threads, "CPU threads (default: all)");
  app.add_option("--prompt-tokens", prompt, "prefill length")->capture_default_str();
  app.add_option("--decode-tokens", decode, "decode steps per batch size")->capture_default_str();
  app.add_option("--batch", batches, "decode batch sizes")->capture_default_str();
  app.add_option("--reps", reps, "repetitions; the best is reported")->capture_default_str();
  app.add_option("--json", json_path, "JSON output path")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  if (model_path.empty()) {
    const char* fx = std::getenv("M40LLM_FIXTURES");
    if (fx && *fx) {
      model_path = std::string(fx) + "/models/tiny-llama-f16.gguf";
    } else {
      auto demo = EnsureDemoModel();
      if (!demo.ok()) {
        std::fprintf(stderr, "error: %s\n", std::string(demo.status().message()).c_str());
        return 1;
      }
      model_path = *demo;
    }
  }
  auto file = GgufFile::Open(model_path);
  if (!file.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(file.status().message()).c_str());
    return 1;
  }
  auto model = LlamaModel::Load(**file, nullptr, threads);
  if (!model.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  const ModelConfig& c = (*model)->config();
  const int max_batch = *std::max_element(batches.begin(), batches.end());
  BackendOptions o;
  o.max_slots = max_batch;
  // Decode sequences start after a 16-token prefill (below).
  o.ctx_per_slot = std::min(c.n_ctx_train, std::max(prompt, 16 + decode) + 1);
  o.n_threads = threads;
  auto backend = CpuBackend::Create(model->get(), o);
  if (!backend.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(backend.status().message()).c_str());
    return 1;
  }
  CpuBackend& b = **backend;
  auto failed = [](const absl::Status& st) {
    std::fprintf(stderr, "error: %s\n", std::string(st.message()).c_str());
    return 1;
  };
  std::vector<Row> rows;
  ForwardOutput out;

  // Prefill: one sequence of `prompt` tokens.
  const auto ptoks = Tokens(prompt, c.n_vocab, 1);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    SeqChunk chunk{0, 0, ptoks, false};
    auto t0 = Clock::now();
    if (auto st = b.Forward({&chunk, 1}, &out); !st.ok()) return failed(st);
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  rows.push_back({"prefill", 1, prompt, best});

  // Decode: `batch` sequences, each after a short prefill, one token a step.
  for (int batch : batches) {
    const int start = 16;
    std::vector<std::vector<int32_t>> seqs;
    for (int s = 0; s < batch; ++s) seqs.push_back(Tokens(start + decode, c.n_vocab, 10 + s));
    double best_d = 1e30;
    for (int r = 0; r < reps; ++r) {
      for (int s = 0; s < batch; ++s) {
        SeqChunk chunk{s, 0, std::span<const int32_t>(seqs[s]).first(start), false};
        if (auto st = b.Forward({&chunk, 1}, &out); !st.ok()) return failed(st);
      }
      auto t0 = Clock::now();
      for (int step = 0; step < decode; ++step) {
        std::vector<SeqChunk> chunks;
        for (int s = 0; s < batch; ++s) {
          chunks.push_back({s, start + step, {&seqs[s][start + step], 1}, false});
        }
        if (auto st = b.Forward(chunks, &out); !st.ok()) return failed(st);
      }
      best_d = std::min(best_d, std::chrono::duration<double>(Clock::now() - t0).count());
    }
    rows.push_back({"decode", batch, decode * batch, best_d});
  }

  const int n_threads = threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency());
  std::printf("m40llm CPU benchmark: %s\n", model_path.c_str());
  std::printf("model: n_embd %d, n_layer %d, vocab %d, %.1f MiB FP16 weights; %d threads\n",
              c.n_embd, c.n_layer, c.n_vocab,
              static_cast<double>((*model)->weight_bytes()) / (1 << 20), n_threads);
  std::printf("%-8s %6s %8s %10s %12s %12s\n", "phase", "batch", "tokens", "seconds", "tokens/s",
              "ms/step");
  nlohmann::json j;
  j["model"] = model_path;
  j["threads"] = n_threads;
  j["n_embd"] = c.n_embd;
  j["n_layer"] = c.n_layer;
  j["n_vocab"] = c.n_vocab;
  j["weight_bytes"] = (*model)->weight_bytes();
  for (const Row& r : rows) {
    const int steps = r.what == "prefill" ? 1 : r.tokens / r.batch;
    const double ms_step = 1000.0 * r.seconds / steps;
    std::printf("%-8s %6d %8d %10.4f %12.1f %12.3f\n", r.what.c_str(), r.batch, r.tokens,
                r.seconds, r.tok_per_s(), ms_step);
    j["results"].push_back({{"phase", r.what},
                            {"batch", r.batch},
                            {"tokens", r.tokens},
                            {"seconds", r.seconds},
                            {"tokens_per_s", r.tok_per_s()},
                            {"ms_per_step", ms_step}});
  }
  return bench::WriteJsonResult(json_path, j);
}

}  // namespace
}  // namespace m40llm

int main(int argc, char** argv) { return m40llm::Main(argc, argv); }
