// Skinny matrix product with FP16 weights: y = x * W^T for a few tokens
// (decode and small prefill batches), FP32 arithmetic.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace m40llm::gpu {

// Weight rows whose stride `ld` is a multiple of this many halves (and whose
// base is 16-byte aligned) take the 16-byte-load path; pad rows to it on
// upload. Other strides work through a slower 2-byte-load path.
inline constexpr int64_t kMatVecRowAlignHalves = 8;

// y (n_tok, rows) FP32 = x (n_tok, cols) FP32 * W^T, as cpu::MatMul: each
// output element is one dot product over a weight row widened to FP32.
// Batch invariance: the summation order of every element (per-lane FMA chains
// over a fixed column split, then a warp butterfly; see matvec.cu) depends
// only on cols and on whether the 16-byte path is taken (ld and w's
// alignment), never on n_tok or the other tokens, so a token's output row is
// bit-identical alone or in any batch.
// w: (rows, ld) FP16 bits, row-major, device; columns [cols, ld) never read.
// x: (n_tok, cols) FP32, device.  y: (n_tok, rows) FP32, device; no aliasing.
// Tuned for n_tok 1..64 (the engine calls LaunchMatMulF16, gemm.cuh, which
// uses this up to kMatMulSkinnyMaxTokens); any n_tok works.
[[nodiscard]] absl::Status LaunchMatVecF16(const uint16_t* w, int64_t rows, int64_t cols,
                                           int64_t ld, const float* x, int64_t n_tok, float* y,
                                           cudaStream_t stream);

}  // namespace m40llm::gpu
