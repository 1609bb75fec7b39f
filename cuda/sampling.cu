// Token sampling kernel and launcher (see sampling.cuh). The kernel is a thin
// wrapper over sampling_device.cuh, which describes the algorithm (that of
// engine/sampler.h, step by step).
#include <cstdint>

#include "cuda/cuda_check.h"
#include "cuda/sampling.cuh"
#include "cuda/sampling_device.cuh"

namespace m40llm::gpu {
namespace {

using sampling::kBlock;

// One block per sequence.
__global__ void __launch_bounds__(kBlock, 1) SampleKernel(const sampling::SampleKernelArgs a) {
  __shared__ sampling::SampleShared sm;
  sampling::SampleRow(a, blockIdx.x, sm);
}

}  // namespace

size_t SampleWorkspaceBytes(int max_seqs, int n_vocab) {
  if (max_seqs <= 0 || n_vocab <= 0) return 0;
  return static_cast<size_t>(max_seqs) * static_cast<size_t>(n_vocab) * 2 * sizeof(int32_t);
}

absl::Status LaunchSample(const SampleArgs& args, cudaStream_t stream) {
  if (args.n_seq < 0) return absl::InvalidArgumentError("LaunchSample: negative n_seq");
  if (args.n_vocab < 1 || args.n_vocab > kSampleMaxVocab) {
    return absl::InvalidArgumentError("LaunchSample: n_vocab must be in [1, 2^21]");
  }
  if (args.n_seq == 0) return absl::OkStatus();
  if (args.logits == nullptr || args.params == nullptr || args.steps == nullptr ||
      args.out == nullptr) {
    return absl::InvalidArgumentError("LaunchSample: null pointer");
  }
  if (args.history != nullptr && (args.hist_len == nullptr || args.hist_stride < 0)) {
    return absl::InvalidArgumentError(
        "LaunchSample: history needs hist_len and a non-negative hist_stride");
  }
  if (args.workspace == nullptr ||
      args.workspace_bytes < SampleWorkspaceBytes(args.n_seq, args.n_vocab) ||
      reinterpret_cast<uintptr_t>(args.workspace) % sizeof(int32_t) != 0) {
    return absl::InvalidArgumentError(
        "LaunchSample: workspace must be 4-byte aligned with SampleWorkspaceBytes(n_seq, "
        "n_vocab) bytes");
  }
  const sampling::SampleKernelArgs kernel_args{
      args.logits,  args.n_vocab,     args.params,
      args.history, args.hist_stride, args.hist_len,
      args.streams, args.steps,       static_cast<char*>(args.workspace),
      args.out};
  SampleKernel<<<static_cast<unsigned int>(args.n_seq), kBlock, 0, stream>>>(kernel_args);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace m40llm::gpu
