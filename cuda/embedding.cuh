// Embedding gather: FP16 table rows selected by token id, widened to FP32.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace m40llm::gpu {

// out (n_tok, n_embd) FP32 = table[ids[t], :] for each token t.
// table: (n_vocab, n_embd) FP16 bits, row-major, device.
// ids:   (n_tok) int32, device. An id outside [0, n_vocab) yields a row of NaN
//        (the kernel cannot report it; validate ids on the host first).
// Asynchronous on `stream`; the status covers arguments and launch only.
[[nodiscard]] absl::Status LaunchEmbeddingGather(const uint16_t* table, int64_t n_vocab,
                                                 int64_t n_embd, const int32_t* ids, int64_t n_tok,
                                                 float* out, cudaStream_t stream);

}  // namespace m40llm::gpu
