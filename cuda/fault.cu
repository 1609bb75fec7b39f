// The trapping kernel behind LaunchTrapForTesting (see fault.cuh).
#include "cuda/cuda_check.h"
#include "cuda/fault.cuh"

namespace m40llm::gpu {
namespace {

__global__ void TrapKernel() { __trap(); }

}  // namespace

absl::Status LaunchTrapForTesting(cudaStream_t stream) {
  TrapKernel<<<1, 1, 0, stream>>>();
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace m40llm::gpu
