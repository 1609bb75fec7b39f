// A deliberate device fault, for testing how the engine survives one: the
// kernel executes a trap instruction, which leaves the CUDA context in a
// sticky error state (every later call fails) exactly as a real fault would.
#pragma once

#include <cuda_runtime_api.h>

#include "absl/status/status.h"

namespace m40llm::gpu {

// Queues the trapping kernel on `stream`. The launch itself succeeds; the
// fault surfaces at the next synchronising call.
[[nodiscard]] absl::Status LaunchTrapForTesting(cudaStream_t stream);

}  // namespace m40llm::gpu
