// GPU kernel benchmark: device-to-device copy bandwidth and the FP16-weight
// matrix-vector kernel's achieved weight bandwidth on model shapes, measured
// side by side in one run. Prints a table and writes JSON; never pass/fail.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "cuda/matvec.cuh"
#include "engine/fp16.h"
#include "nlohmann/json.hpp"

namespace m40llm {
namespace {

#define BENCH_CHECK(expr)                                                       \
  do {                                                                          \
    cudaError_t e_ = (expr);                                                    \
    if (e_ != cudaSuccess) {                                                    \
      std::fprintf(stderr, "%s failed: %s\n", #expr, cudaGetErrorString(e_));   \
      return 1;                                                                 \
    }                                                                           \
  } while (0)

struct Shape {
  const char* name;
  int64_t rows, cols;
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

int Main(int argc, char** argv) {
  CLI::App app{"m40llm GPU kernel benchmark: copy bandwidth and FP16 matvec"};
  std::string json_path = "cuda_kernel_bench.json";
  int reps = 50;
  app.add_option("--json", json_path, "JSON output path")->capture_default_str();
  app.add_option("--reps", reps, "timed repetitions (median reported)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  cudaDeviceProp prop{};
  BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));

  // Device-to-device copy: bytes read + bytes written per second.
  const size_t copy_bytes = size_t{1} << 30;
  void *src = nullptr, *dst = nullptr;
  BENCH_CHECK(cudaMalloc(&src, copy_bytes));
  BENCH_CHECK(cudaMalloc(&dst, copy_bytes));
  BENCH_CHECK(cudaMemset(src, 1, copy_bytes));
  const double copy_ms =
      MedianMs(reps / 5 + 1, [&] { cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice); });
  const double copy_gbs = 2.0 * copy_bytes / (copy_ms * 1e-3) / 1e9;
  BENCH_CHECK(cudaFree(src));
  BENCH_CHECK(cudaFree(dst));

  const Shape shapes[] = {{"attn 4096x4096", 4096, 4096},
                          {"ffn_up 11008x4096", 11008, 4096},
                          {"ffn_down 4096x11008", 4096, 11008},
                          {"lm_head 32000x4096", 32000, 4096},
                          {"tinyllama ffn 5632x2048", 5632, 2048}};
  const int toks[] = {1, 4, 16, 32};

  std::printf("GPU: %s (%d SMs); device-to-device copy %.1f GB/s (read + write)\n", prop.name,
              prop.multiProcessorCount, copy_gbs);
  std::printf("%-26s %6s %10s %10s %10s\n", "matvec (FP16 W, FP32 x)", "n_tok", "us", "W GB/s",
              "of copy");
  nlohmann::json j;
  j["device"] = prop.name;
  j["copy_gbs"] = copy_gbs;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (const Shape& s : shapes) {
    const size_t n = static_cast<size_t>(s.rows * s.cols);
    std::vector<uint16_t> hw(n);
    for (auto& v : hw) v = FloatToHalf(u(rng));
    uint16_t* w = nullptr;
    float *x = nullptr, *y = nullptr;
    BENCH_CHECK(cudaMalloc(reinterpret_cast<void**>(&w), n * 2));
    BENCH_CHECK(cudaMemcpy(w, hw.data(), n * 2, cudaMemcpyHostToDevice));
    BENCH_CHECK(cudaMalloc(reinterpret_cast<void**>(&x), sizeof(float) * 32 * s.cols));
    BENCH_CHECK(cudaMalloc(reinterpret_cast<void**>(&y), sizeof(float) * 32 * s.rows));
    std::vector<float> hx(32 * s.cols);
    for (auto& v : hx) v = u(rng);
    BENCH_CHECK(cudaMemcpy(x, hx.data(), hx.size() * 4, cudaMemcpyHostToDevice));
    for (int t : toks) {
      bool ok = true;
      const double ms = MedianMs(reps, [&] {
        ok = ok && gpu::LaunchMatVecF16(w, s.rows, s.cols, s.cols, x, t, y, nullptr).ok();
      });
      BENCH_CHECK(cudaGetLastError());
      if (!ok) {
        std::fprintf(stderr, "matvec launch failed for %s\n", s.name);
        return 1;
      }
      const double gbs = n * 2.0 / (ms * 1e-3) / 1e9;
      std::printf("%-26s %6d %10.1f %10.1f %9.0f%%\n", s.name, t, ms * 1e3, gbs,
                  100.0 * gbs / copy_gbs);
      j["matvec"].push_back({{"shape", s.name},
                             {"rows", s.rows},
                             {"cols", s.cols},
                             {"n_tok", t},
                             {"us", ms * 1e3},
                             {"weight_gbs", gbs},
                             {"fraction_of_copy", gbs / copy_gbs}});
    }
    cudaFree(w);
    cudaFree(x);
    cudaFree(y);
  }
  std::ofstream(json_path) << j.dump(2) << "\n";
  std::printf("wrote %s\n", json_path.c_str());
  return 0;
}

}  // namespace
}  // namespace m40llm

int main(int argc, char** argv) { return m40llm::Main(argc, argv); }
