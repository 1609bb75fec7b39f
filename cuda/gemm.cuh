// FP16-weight matrix product for prefill: y = x * W^T for many tokens, FP32
// arithmetic, shared-memory tiles; and LaunchMatMulF16, the one entry the
// engine calls for every projection, which picks the skinny kernel
// (matvec.cuh) for few tokens and the tiled kernel here for many.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace m40llm::gpu {

// LaunchMatMulF16 uses the skinny kernel (LaunchMatVecF16) for n_tok up to
// this many tokens and the tiled GEMM above it. It is at least 64 by
// contract (decode batch invariance, see LaunchMatMulF16). The crossover
// measured by bench/cuda_kernel_bench.cc on an H200 lies between 64 and 128
// tokens (at 64 the GEMM wins for some model shapes and loses for others;
// at 128 it wins for all), so the contract's minimum is also the choice.
inline constexpr int64_t kMatMulSkinnyMaxTokens = 64;

// Block tiles of the GEMM kernel, (tokens x weight rows) per thread block.
// kAuto picks by grid size and the device's multiprocessor count (the least
// estimated time counting partial waves); the others exist so tests and
// benchmarks can run every variant.
enum class GemmTile : int {
  kAuto = 0,
  k128x128 = 1,  // 256 threads, 8x8 outputs per thread
  k64x128 = 2,   // 128 threads, 8x8 outputs per thread
  k64x64 = 3,    // 128 threads, 4x8 (tokens x rows) per thread
};

// y (n_tok, rows) FP32 = x (n_tok, cols) FP32 * W^T, the same contract as
// LaunchMatVecF16: w (rows, ld) FP16 bits, row-major, device, columns
// [cols, ld) never used; x (n_tok, cols) FP32 device; y (n_tok, rows) FP32
// device, no aliasing. Any shape works (edges are guarded); the fast path
// wants ld a multiple of 8 halves with a 16-byte-aligned w, cols a multiple
// of 4 with a 16-byte-aligned x, and rows a multiple of 4 with a
// 16-byte-aligned y. Each output element is one FMA chain over k = 0..cols-1
// in order, starting from 0, so a token's row does not depend on the other
// tokens in the call or on the tile (it differs from LaunchMatVecF16 in the
// last bits). No split over k: the grid is (n_tok / tile) x (rows / tile).
[[nodiscard]] absl::Status LaunchGemmF16(const uint16_t* w, int64_t rows, int64_t cols, int64_t ld,
                                         const float* x, int64_t n_tok, float* y,
                                         cudaStream_t stream);

// As LaunchGemmF16 with a chosen block tile (for tests and benchmarks).
[[nodiscard]] absl::Status LaunchGemmF16Tiled(const uint16_t* w, int64_t rows, int64_t cols,
                                              int64_t ld, const float* x, int64_t n_tok, float* y,
                                              GemmTile tile, cudaStream_t stream);

// The product the engine calls for every projection and the LM head; same
// arguments and layout as LaunchGemmF16. For n_tok <= kMatMulSkinnyMaxTokens
// it runs LaunchMatVecF16, whose per-element summation order depends only on
// cols and on the weights' layout (ld and w's alignment), never on n_tok or
// on the other tokens: a token's output row is bit-identical whether it is
// alone or in a batch of up to kMatMulSkinnyMaxTokens (decode batch
// invariance). Above that it runs the GEMM, whose rows are also independent
// of the batch but differ from the skinny kernel's in the last bits.
[[nodiscard]] absl::Status LaunchMatMulF16(const uint16_t* w, int64_t rows, int64_t cols,
                                           int64_t ld, const float* x, int64_t n_tok, float* y,
                                           cudaStream_t stream);

}  // namespace m40llm::gpu
