// GPU kernel benchmark for the FP16-weight products, on top of the yardstick
// library (bench/gpu_yardstick.h): device-to-device copy bandwidth; the skinny
// kernel (LaunchMatVecF16) at 1..64 tokens as weight GB/s and % of copy
// bandwidth, beside cuBLAS SGEMV/SGEMM on FP32 copies; the tiled GEMM at 512
// tokens as TFLOP/s and % of cuBLAS SGEMM (every tile); and the skinny/GEMM
// crossover that sets kMatMulSkinnyMaxTokens. Prints tables and writes JSON;
// never pass/fail.
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "bench/bench_json.h"
#include "bench/gpu_yardstick.h"
#include "cuda/gemm.cuh"
#include "nlohmann/json.hpp"

namespace m40llm {
namespace {

using bench::ProductBench;

struct Shape {
  const char* name;
  int64_t rows;
  int64_t cols;
};

const char* TileName(gpu::GemmTile t) {
  switch (t) {
    case gpu::GemmTile::kAuto:
      return "auto";
    case gpu::GemmTile::k128x128:
      return "128x128";
    case gpu::GemmTile::k64x128:
      return "64x128";
    case gpu::GemmTile::k64x64:
      return "64x64";
  }
  return "?";
}

int Fail(const absl::Status& st, const char* what) {
  std::fprintf(stderr, "%s: %s\n", what, st.ToString().c_str());
  return 1;
}

int Main(int argc, char** argv) {
  CLI::App app{"m40llm GPU kernel benchmark: copy bandwidth, FP16-weight products vs cuBLAS"};
  std::string json_path = "cuda_kernel_bench.json";
  bench::TimingOptions timing;
  app.add_option("--json", json_path, "JSON output path")->capture_default_str();
  app.add_option("--reps", timing.reps, "timed repetitions (median reported)")
      ->capture_default_str();
  app.add_option("--warmup", timing.warmup, "untimed runs first")->capture_default_str();
  std::string only = "all";
  app.add_option("--only", only, "one section: matvec, gemm or crossover (default all)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  const bool all = only == "all";

  auto gpu = bench::QueryGpu();
  if (!gpu.ok()) return Fail(gpu.status(), "QueryGpu");
  auto copy = bench::MeasureCopyBandwidth(int64_t{1} << 30, timing);
  if (!copy.ok()) return Fail(copy.status(), "MeasureCopyBandwidth");
  const double copy_gbs = copy->gbs;
  std::printf(
      "GPU: %s (sm_%d%d, %d SMs, %.0f MB L2); device-to-device copy %.1f GB/s (read + write)\n",
      gpu->name.c_str(), gpu->cc_major, gpu->cc_minor, gpu->sm_count,
      static_cast<double>(gpu->l2_bytes) / 1e6, copy_gbs);

  nlohmann::json j;
  j["device"] = gpu->name;
  j["sm_count"] = gpu->sm_count;
  j["compute_capability"] = std::to_string(gpu->cc_major) + "." + std::to_string(gpu->cc_minor);
  j["copy_gbs"] = copy_gbs;
  j["timing"] = {{"warmup", timing.warmup}, {"reps", timing.reps}, {"statistic", "median"}};

  // One set of device buffers per shape, shared by all sections.
  std::map<std::pair<int64_t, int64_t>, std::unique_ptr<ProductBench>> benches;
  auto bench_for = [&](const Shape& s) -> ProductBench* {
    auto& slot = benches[{s.rows, s.cols}];
    if (!slot) {
      auto created = ProductBench::Create(s.rows, s.cols, 512);
      if (!created.ok()) {
        Fail(created.status(), "ProductBench::Create");
        return nullptr;
      }
      slot = std::move(*created);
    }
    return slot.get();
  };

  const Shape matvec_shapes[] = {{"attn 4096x4096", 4096, 4096},
                                 {"ffn_up 11008x4096", 11008, 4096},
                                 {"ffn_down 4096x11008", 4096, 11008},
                                 {"lm_head 32000x4096", 32000, 4096},
                                 {"tinyllama ffn 5632x2048", 5632, 2048}};
  std::printf("\nskinny product LaunchMatVecF16 (FP16 W, FP32 x); cuBLAS on FP32 W\n");
  std::printf("%-24s %5s %9s %9s %7s | %6s %9s %9s %7s %8s\n", "shape", "n_tok", "us", "W GB/s",
              "of copy", "cuBLAS", "us", "W32 GB/s", "of copy", "rel diff");
  for (const Shape& s : matvec_shapes) {
    if (!all && only != "matvec") break;
    ProductBench* pb = bench_for(s);
    if (pb == nullptr) return 1;
    for (int64_t t : {1, 4, 16, 32, 64}) {
      auto r = pb->MatVec(t, timing);
      if (!r.ok()) return Fail(r.status(), "MatVec");
      std::printf("%-24s %5lld %9.1f %9.1f %6.0f%% | %6s %9.1f %9.1f %6.0f%% %8.1e\n", s.name,
                  static_cast<long long>(t), r->ms * 1e3, r->weight_gbs,
                  100.0 * r->weight_gbs / copy_gbs, r->cublas_routine.c_str(), r->cublas_ms * 1e3,
                  r->cublas_weight_gbs, 100.0 * r->cublas_weight_gbs / copy_gbs,
                  r->rel_l2_vs_cublas);
      j["matvec"].push_back({{"shape", s.name},
                             {"rows", s.rows},
                             {"cols", s.cols},
                             {"n_tok", t},
                             {"us", r->ms * 1e3},
                             {"weight_gbs", r->weight_gbs},
                             {"fraction_of_copy", r->weight_gbs / copy_gbs},
                             {"cublas_routine", r->cublas_routine},
                             {"cublas_us", r->cublas_ms * 1e3},
                             {"cublas_fp32_weight_gbs", r->cublas_weight_gbs},
                             {"rel_l2_vs_cublas", r->rel_l2_vs_cublas}});
    }
  }

  const Shape gemm_shapes[] = {{"4096x4096", 4096, 4096},   {"11008x4096", 11008, 4096},
                               {"4096x11008", 4096, 11008}, {"2048x2048", 2048, 2048},
                               {"5632x2048", 5632, 2048},   {"2048x5632", 2048, 5632},
                               {"32000x4096", 32000, 4096}};
  constexpr int64_t kPrefillTok = 512;
  const gpu::GemmTile tiles[] = {gpu::GemmTile::k128x128, gpu::GemmTile::k64x128,
                                 gpu::GemmTile::k64x64};
  std::printf(
      "\nGEMM LaunchGemmF16 at n_tok %lld (auto tile) vs cuBLAS SGEMM on FP32 W; "
      "TFLOP/s of each tile\n",
      static_cast<long long>(kPrefillTok));
  std::printf("%-12s %9s %8s | %9s %8s %8s %8s | %8s %8s %8s\n", "rows x cols", "us", "TFLOP/s",
              "cuBLAS us", "TFLOP/s", "of cuBLAS", "rel diff", "128x128", "64x128", "64x64");
  for (const Shape& s : gemm_shapes) {
    if (!all && only != "gemm") break;
    ProductBench* pb = bench_for(s);
    if (pb == nullptr) return 1;
    auto r = pb->Gemm(kPrefillTok, gpu::GemmTile::kAuto, true, timing);
    if (!r.ok()) return Fail(r.status(), "Gemm");
    nlohmann::json row = {{"shape", s.name},
                          {"rows", s.rows},
                          {"cols", s.cols},
                          {"n_tok", kPrefillTok},
                          {"us", r->ms * 1e3},
                          {"tflops", r->tflops},
                          {"cublas_us", r->cublas_ms * 1e3},
                          {"cublas_tflops", r->cublas_tflops},
                          {"fraction_of_cublas", r->tflops / r->cublas_tflops},
                          {"rel_l2_vs_cublas", r->rel_l2_vs_cublas}};
    double per_tile[3] = {};
    for (int i = 0; i < 3; ++i) {
      auto rt = pb->Gemm(kPrefillTok, tiles[i], false, timing);
      if (!rt.ok()) return Fail(rt.status(), "Gemm tile");
      per_tile[i] = rt->tflops;
      row["tile_tflops"][TileName(tiles[i])] = rt->tflops;
    }
    std::printf("%-12s %9.1f %8.2f | %9.1f %8.2f %7.0f%% %8.1e | %8.2f %8.2f %8.2f\n", s.name,
                r->ms * 1e3, r->tflops, r->cublas_ms * 1e3, r->cublas_tflops,
                100.0 * r->tflops / r->cublas_tflops, r->rel_l2_vs_cublas, per_tile[0], per_tile[1],
                per_tile[2]);
    j["gemm"].push_back(row);
  }

  // Where the GEMM overtakes the skinny kernel. LaunchMatMulF16 keeps the
  // skinny kernel up to at least 64 tokens regardless (batch invariance).
  const Shape cross_shapes[] = {{"4096x4096", 4096, 4096},
                                {"11008x4096", 11008, 4096},
                                {"4096x11008", 4096, 11008},
                                {"5632x2048", 5632, 2048}};
  std::printf("\nskinny vs GEMM (auto tile), us; LaunchMatMulF16 switches above %lld tokens\n",
              static_cast<long long>(gpu::kMatMulSkinnyMaxTokens));
  std::printf("%-12s %5s %9s %9s %8s\n", "rows x cols", "n_tok", "skinny", "GEMM", "faster");
  for (const Shape& s : cross_shapes) {
    if (!all && only != "crossover") break;
    ProductBench* pb = bench_for(s);
    if (pb == nullptr) return 1;
    for (int64_t t : {16, 32, 48, 64, 96, 128, 192, 256}) {
      auto mv = pb->MatVec(t, timing);
      if (!mv.ok()) return Fail(mv.status(), "MatVec");
      auto gm = pb->Gemm(t, gpu::GemmTile::kAuto, false, timing);
      if (!gm.ok()) return Fail(gm.status(), "Gemm");
      std::printf("%-12s %5lld %9.1f %9.1f %8s\n", s.name, static_cast<long long>(t), mv->ms * 1e3,
                  gm->ms * 1e3, mv->ms <= gm->ms ? "skinny" : "GEMM");
      j["crossover"].push_back({{"shape", s.name},
                                {"rows", s.rows},
                                {"cols", s.cols},
                                {"n_tok", t},
                                {"skinny_us", mv->ms * 1e3},
                                {"gemm_us", gm->ms * 1e3}});
    }
  }

  return bench::WriteJsonResult(json_path, j);
}

}  // namespace
}  // namespace m40llm

int main(int argc, char** argv) { return m40llm::Main(argc, argv); }
