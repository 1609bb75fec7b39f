// GPU yardsticks for the FP16-weight product kernels: the device's copy
// bandwidth, and our kernels (cuda/matvec.cuh, cuda/gemm.cuh) beside cuBLAS
// SGEMV/SGEMM on FP32 copies of the same weights, each timed with CUDA events
// (median of N after warm-up). Results are plain structs; nothing here prints.
// bench/cuda_kernel_bench.cc and `m40llm bench` format them.
//
// cuBLAS is a yardstick only: this library opens it with dlopen at run time; the
// product path (m40llm_cuda) never does.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cuda/gemm.cuh"

namespace m40llm::bench {

// The current CUDA device.
struct GpuInfo {
  int device = 0;
  std::string name;
  int sm_count = 0;
  int cc_major = 0;
  int cc_minor = 0;
  int64_t l2_bytes = 0;
  int64_t memory_bytes = 0;
};
[[nodiscard]] absl::StatusOr<GpuInfo> QueryGpu();

struct TimingOptions {
  int warmup = 3;  // untimed runs first
  int reps = 25;   // timed runs, each between two events; the median is reported
};

struct CopyBandwidth {
  int64_t bytes = 0;  // size of one device-to-device copy
  double ms = 0;      // median time of one copy
  double gbs = 0;     // bytes read + bytes written per second / 1e9 (2 * bytes / time)
};

// Device-to-device cudaMemcpyAsync of `bytes` (two buffers of that size).
[[nodiscard]] absl::StatusOr<CopyBandwidth> MeasureCopyBandwidth(int64_t bytes = int64_t{1} << 30,
                                                                 const TimingOptions& options = {});

// The skinny product (LaunchMatVecF16) beside cuBLAS on FP32 weights:
// SGEMV for one token, SGEMM otherwise.
struct MatVecResult {
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t n_tok = 0;
  double ms = 0;                 // ours, median
  double weight_gbs = 0;         // FP16 weight bytes (2 rows cols) per second / 1e9
  std::string cublas_routine;    // "sgemv" or "sgemm"
  double cublas_ms = 0;          // median
  double cublas_weight_gbs = 0;  // FP32 weight bytes (4 rows cols) per second / 1e9
  double rel_l2_vs_cublas = 0;   // our output against cuBLAS's
};

// The tiled GEMM (LaunchGemmF16Tiled) beside cuBLAS SGEMM on FP32 weights.
struct GemmResult {
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t n_tok = 0;
  gpu::GemmTile tile = gpu::GemmTile::kAuto;  // as asked; kAuto is the launcher's choice
  double ms = 0;                              // ours, median
  double tflops = 0;                          // 2 n_tok rows cols per second / 1e12
  double cublas_ms = 0;                       // 0 when cuBLAS was not asked for
  double cublas_tflops = 0;
  double rel_l2_vs_cublas = 0;  // 0 when cuBLAS was not asked for
};

// Device buffers for one weight shape, reused across token counts: random
// FP16 weights (rows, cols), packed, in enough copies (rotated from run to
// run) that together they are at least three times the L2 cache, so repeated
// runs read DRAM; their FP32 copies for cuBLAS, rotated the same way;
// activations for up to max_tok tokens. The weights are the same in every
// copy, so results can be compared across routines.
class ProductBench {
 public:
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<ProductBench>> Create(int64_t rows,
                                                                            int64_t cols,
                                                                            int64_t max_tok);
  ~ProductBench();
  ProductBench(const ProductBench&) = delete;
  ProductBench& operator=(const ProductBench&) = delete;

  // LaunchMatVecF16 and cuBLAS for n_tok (<= max_tok) tokens.
  [[nodiscard]] absl::StatusOr<MatVecResult> MatVec(int64_t n_tok,
                                                    const TimingOptions& options = {});
  // LaunchGemmF16Tiled with `tile`, and cuBLAS SGEMM when with_cublas.
  [[nodiscard]] absl::StatusOr<GemmResult> Gemm(int64_t n_tok,
                                                gpu::GemmTile tile = gpu::GemmTile::kAuto,
                                                bool with_cublas = true,
                                                const TimingOptions& options = {});

 private:
  struct Impl;
  explicit ProductBench(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// One-shot forms of ProductBench::MatVec and ::Gemm (auto tile, with cuBLAS).
[[nodiscard]] absl::StatusOr<MatVecResult> MeasureMatVec(int64_t rows, int64_t cols, int64_t n_tok,
                                                         const TimingOptions& options = {});
[[nodiscard]] absl::StatusOr<GemmResult> MeasureGemm(int64_t rows, int64_t cols, int64_t n_tok,
                                                     const TimingOptions& options = {});

}  // namespace m40llm::bench
