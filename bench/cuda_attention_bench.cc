// Causal prefill attention benchmark: LaunchPrefillAttention (query tiles
// sharing staged K/V tiles) against the current fallback, LaunchDecodeAttention
// with one entry per query token, on one chunk of a prompt, measured side by
// side in one run (median of CUDA-event timings). Prints a table and writes
// JSON; never pass/fail. The relative L2 between the two outputs is printed
// as a sanity check, not judged.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "bench/bench_json.h"
#include "cuda/attention.cuh"
#include "cuda/attention_prefill.cuh"
#include "engine/fp16.h"
#include "nlohmann/json.hpp"

namespace m40llm {
namespace {

#define BENCH_CHECK(expr)                                                     \
  do {                                                                        \
    cudaError_t e_ = (expr);                                                  \
    if (e_ != cudaSuccess) {                                                  \
      std::fprintf(stderr, "%s failed: %s\n", #expr, cudaGetErrorString(e_)); \
      return 1;                                                               \
    }                                                                         \
  } while (0)

#define BENCH_CHECK_OK(expr)                                                             \
  do {                                                                                   \
    const absl::Status s_ = (expr);                                                      \
    if (!s_.ok()) {                                                                      \
      std::fprintf(stderr, "%s failed: %s\n", #expr, std::string(s_.message()).c_str()); \
      return 1;                                                                          \
    }                                                                                    \
  } while (0)

struct Model {
  const char* name;
  int n_head, n_head_kv, head_dim;
};

// One chunk of n_tok query tokens at positions pos .. pos + n_tok - 1.
struct Case {
  int n_tok;
  int pos;
};

// Median of `reps` timings (ms) of `fn` launched on the default stream.
template <typename Fn>
double MedianMs(int reps, Fn fn) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  fn();  // warm-up
  cudaDeviceSynchronize();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(a);
    fn();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

template <typename T>
T* DeviceCopy(const std::vector<T>& host) {
  void* p = nullptr;
  if (cudaMalloc(&p, host.size() * sizeof(T)) != cudaSuccess) return nullptr;
  if (cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice) != cudaSuccess) {
    cudaFree(p);
    return nullptr;
  }
  return static_cast<T*>(p);
}

int Main(int argc, char** argv) {
  CLI::App app{"m40llm causal prefill attention benchmark: prefill kernel vs decode per token"};
  std::string json_path = "cuda_attention_bench.json";
  int reps = 20;
  app.add_option("--json", json_path, "JSON output path")->capture_default_str();
  app.add_option("--reps", reps, "timed repetitions (median reported)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  reps = std::max(reps, 1);

  cudaDeviceProp prop{};
  BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
  const Model models[] = {{"tinyllama", 32, 4, 64}, {"llama2-7b", 32, 32, 128}};
  const Case cases[] = {{512, 0}, {2048, 0}, {512, 1536}};

  std::printf("GPU: %s (%d SMs); one chunk, FP16 cache, FP32 math; median of %d runs\n", prop.name,
              prop.multiProcessorCount, reps);
  std::printf("%-10s %6s %6s %11s %11s %8s %10s %10s %9s\n", "model", "n_tok", "pos", "prefill us",
              "decode us", "speedup", "pf TFLOP/s", "dec TFLOP/s", "rel L2");
  nlohmann::json j;
  j["device"] = prop.name;
  j["reps"] = reps;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (const Model& m : models) {
    for (const Case& c : cases) {
      const int ctx = c.pos + c.n_tok;
      const size_t row = static_cast<size_t>(m.n_head) * m.head_dim;
      const size_t cache_n = static_cast<size_t>(m.n_head_kv) * ctx * m.head_dim;
      std::vector<float> hq(c.n_tok * row);
      for (float& f : hq) f = 2 * u(rng);
      std::vector<uint16_t> hk(cache_n), hv(cache_n);
      for (uint16_t& h : hk) h = FloatToHalf(u(rng));
      for (uint16_t& h : hv) h = FloatToHalf(u(rng));
      // Prefill: one chunk in slot 0. Decode: entry i is token i, length pos + i + 1.
      const std::vector<int32_t> chunk_slot = {0}, chunk_pos = {c.pos}, chunk_len = {c.n_tok},
                                 chunk_row = {0};
      std::vector<int32_t> slots(c.n_tok, 0), lengths(c.n_tok);
      for (int i = 0; i < c.n_tok; ++i) lengths[i] = c.pos + i + 1;

      float* q = DeviceCopy(hq);
      uint16_t* k = DeviceCopy(hk);
      uint16_t* v = DeviceCopy(hv);
      int32_t* d_cslot = DeviceCopy(chunk_slot);
      int32_t* d_cpos = DeviceCopy(chunk_pos);
      int32_t* d_clen = DeviceCopy(chunk_len);
      int32_t* d_crow = DeviceCopy(chunk_row);
      int32_t* d_slots = DeviceCopy(slots);
      int32_t* d_lengths = DeviceCopy(lengths);
      float *out_pf = nullptr, *out_dec = nullptr;
      void* ws = nullptr;
      const size_t ws_bytes =
          gpu::DecodeAttentionWorkspaceBytes(c.n_tok, m.n_head, m.head_dim, ctx);
      BENCH_CHECK(cudaMalloc(reinterpret_cast<void**>(&out_pf), hq.size() * sizeof(float)));
      BENCH_CHECK(cudaMalloc(reinterpret_cast<void**>(&out_dec), hq.size() * sizeof(float)));
      BENCH_CHECK(cudaMalloc(&ws, std::max<size_t>(ws_bytes, 1)));
      if (!q || !k || !v || !d_cslot || !d_cpos || !d_clen || !d_crow || !d_slots || !d_lengths) {
        std::fprintf(stderr, "device allocation failed\n");
        return 1;
      }

      // One slot of ctx positions.
      const gpu::KvCacheLayer cache{.k = k,
                                    .v = v,
                                    .max_slots = 1,
                                    .n_head_kv = m.n_head_kv,
                                    .ctx_per_slot = ctx,
                                    .head_dim = m.head_dim};
      auto prefill = [&] {
        return gpu::LaunchPrefillAttention({.q = q,
                                            .n_tok = c.n_tok,
                                            .n_head = m.n_head,
                                            .chunk_slot = d_cslot,
                                            .chunk_pos = d_cpos,
                                            .chunk_len = d_clen,
                                            .chunk_row = d_crow,
                                            .n_chunks = 1,
                                            .max_chunk_len = c.n_tok,
                                            .max_context = ctx,
                                            .cache = cache,
                                            .out = out_pf},
                                           nullptr);
      };
      auto decode = [&] {
        return gpu::LaunchDecodeAttention({.q = q,
                                           .n_seq = c.n_tok,
                                           .n_head = m.n_head,
                                           .slots = d_slots,
                                           .lengths = d_lengths,
                                           .max_len = ctx,
                                           .cache = cache,
                                           .workspace = ws,
                                           .workspace_bytes = ws_bytes,
                                           .out = out_dec},
                                          nullptr);
      };
      BENCH_CHECK_OK(prefill());
      BENCH_CHECK_OK(decode());
      BENCH_CHECK(cudaDeviceSynchronize());
      bool ok = true;
      const double pf_ms = MedianMs(reps, [&] { ok = ok && prefill().ok(); });
      const double dec_ms = MedianMs(reps, [&] { ok = ok && decode().ok(); });
      BENCH_CHECK(cudaGetLastError());
      if (!ok) {
        std::fprintf(stderr, "launch failed for %s n_tok %d\n", m.name, c.n_tok);
        return 1;
      }

      std::vector<float> a(hq.size()), b(hq.size());
      BENCH_CHECK(cudaMemcpy(a.data(), out_pf, a.size() * sizeof(float), cudaMemcpyDeviceToHost));
      BENCH_CHECK(cudaMemcpy(b.data(), out_dec, b.size() * sizeof(float), cudaMemcpyDeviceToHost));
      double num = 0, den = 0;
      for (size_t i = 0; i < a.size(); ++i) {
        num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
        den += static_cast<double>(b[i]) * b[i];
      }
      const double rel_l2 = std::sqrt(num / den);

      // Each (query, key) pair costs 2 * head_dim FLOPs for the score and
      // 2 * head_dim for the weighted V, per query head.
      const double keys = static_cast<double>(c.n_tok) * c.pos + 0.5 * c.n_tok * (c.n_tok + 1.0);
      const double flops = 4.0 * m.head_dim * m.n_head * keys;
      const double pf_tflops = flops / (pf_ms * 1e-3) / 1e12;
      const double dec_tflops = flops / (dec_ms * 1e-3) / 1e12;
      std::printf("%-10s %6d %6d %11.1f %11.1f %7.2fx %10.2f %10.2f %9.2g\n", m.name, c.n_tok,
                  c.pos, pf_ms * 1e3, dec_ms * 1e3, dec_ms / pf_ms, pf_tflops, dec_tflops, rel_l2);
      j["cases"].push_back({{"model", m.name},
                            {"n_head", m.n_head},
                            {"n_head_kv", m.n_head_kv},
                            {"head_dim", m.head_dim},
                            {"n_tok", c.n_tok},
                            {"pos", c.pos},
                            {"prefill_us", pf_ms * 1e3},
                            {"decode_per_token_us", dec_ms * 1e3},
                            {"speedup", dec_ms / pf_ms},
                            {"prefill_tflops", pf_tflops},
                            {"decode_per_token_tflops", dec_tflops},
                            {"rel_l2_prefill_vs_decode", rel_l2}});
      for (void* p :
           {static_cast<void*>(q), static_cast<void*>(k), static_cast<void*>(v),
            static_cast<void*>(d_cslot), static_cast<void*>(d_cpos), static_cast<void*>(d_clen),
            static_cast<void*>(d_crow), static_cast<void*>(d_slots), static_cast<void*>(d_lengths),
            static_cast<void*>(out_pf), static_cast<void*>(out_dec), ws}) {
        cudaFree(p);
      }
    }
  }
  return bench::WriteJsonResult(json_path, j);
}

}  // namespace
}  // namespace m40llm

int main(int argc, char** argv) { return m40llm::Main(argc, argv); }
