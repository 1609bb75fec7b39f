// Dequantisation of GGUF tensor data (the ggml block formats) to float32 and
// float16. The float32 results are bit-identical to llama.cpp's reference
// dequantize_row_* functions; the float16 results are those rounded to
// nearest even.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "engine/ggml_types.h"

namespace m40llm {

// Dequantises `n` consecutive values (n a multiple of the type's block size)
// of `type` from `src` (n / block_elems blocks, little-endian as stored in a
// GGUF file) into float32 `dst` (n values). Supported: F32, F16, BF16, Q4_0,
// Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K; any other type, or
// an `n` that is not a whole number of blocks, is InvalidArgument.
[[nodiscard]] absl::Status DequantizeToF32(GgmlType type, const uint8_t* src,
                                           size_t n, float* dst);

// Same, then rounds each value to FP16 storage in `dst` (n values). Values
// outside FP16's finite range (|x| > 65504, infinities included, from any
// input type) are clamped to +-65504 and counted in `*clamped` (if non-null,
// incremented, not reset). NaN stays NaN. F16 input is copied unchanged.
[[nodiscard]] absl::Status DequantizeToF16(GgmlType type, const uint8_t* src,
                                           size_t n, uint16_t* dst,
                                           uint64_t* clamped);

}  // namespace m40llm
