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

absl::Status LaunchSample(float* logits, int n_seq, int n_vocab, const SamplingParams* params,
                          const int32_t* history, int64_t hist_stride, const int32_t* hist_len,
                          const uint64_t* streams, const int32_t* steps, void* workspace,
                          size_t workspace_bytes, DeviceSample* out, cudaStream_t stream) {
  if (n_seq < 0) return absl::InvalidArgumentError("LaunchSample: negative n_seq");
  if (n_vocab < 1 || n_vocab > kSampleMaxVocab) {
    return absl::InvalidArgumentError("LaunchSample: n_vocab must be in [1, 2^21]");
  }
  if (n_seq == 0) return absl::OkStatus();
  if (logits == nullptr || params == nullptr || steps == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("LaunchSample: null pointer");
  }
  if (history != nullptr && (hist_len == nullptr || hist_stride < 0)) {
    return absl::InvalidArgumentError(
        "LaunchSample: history needs hist_len and a non-negative hist_stride");
  }
  if (workspace == nullptr || workspace_bytes < SampleWorkspaceBytes(n_seq, n_vocab) ||
      reinterpret_cast<uintptr_t>(workspace) % sizeof(int32_t) != 0) {
    return absl::InvalidArgumentError(
        "LaunchSample: workspace must be 4-byte aligned with SampleWorkspaceBytes(n_seq, "
        "n_vocab) bytes");
  }
  const sampling::SampleKernelArgs args{logits,  n_vocab,     params,
                                        history, hist_stride, hist_len,
                                        streams, steps,       static_cast<char*>(workspace),
                                        out};
  SampleKernel<<<static_cast<unsigned int>(n_seq), kBlock, 0, stream>>>(args);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace m40llm::gpu
