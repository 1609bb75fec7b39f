// Simple reference quantisers: turn float32 values into valid ggml blocks.
// Used by tests and by `m40llm mkmodel` to build model files. The scale
// choices are plain per-block min/max or absmax rules, not llama.cpp's
// error-minimising search, so the bytes differ from llama-quantize's output;
// DequantizeToF32 decodes them.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "engine/ggml_types.h"

namespace m40llm {

// Encodes `n` values (a multiple of the type's block size) from `src` as
// `type`; returns the packed bytes (n / block_elems * block_bytes of them).
// Supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K,
// Q5_K, Q6_K; other types and ragged `n` are InvalidArgument. Inputs should
// be finite.
[[nodiscard]] absl::StatusOr<std::string> QuantizeFromF32(GgmlType type,
                                                          const float* src,
                                                          size_t n);

}  // namespace m40llm
