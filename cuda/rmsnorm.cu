// RMSNorm kernel and launcher (see rmsnorm.cuh).
#include <climits>

#include "cuda/cuda_check.h"
#include "cuda/kernel_util.h"
#include "cuda/rmsnorm.cuh"

namespace m40llm::gpu {
namespace {

// One block per row. x and out may alias: every read of the first pass
// happens before the barrier inside BlockSum, and the second pass reads and
// writes the same element in the same thread.
template <int kBlock>
__global__ void __launch_bounds__(kBlock) RmsNormKernel(const float* x,  // (n_rows, n)
                                                        const float* __restrict__ weight,  // (n)
                                                        int64_t n, float eps,
                                                        float* out) {  // (n_rows, n)
  __shared__ float scratch[kBlock / internal::kWarpSize];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * n;
  float* yr = out + row * n;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += kBlock) {
    const float v = xr[i];
    ss = fmaf(v, v, ss);
  }
  ss = internal::BlockSum<kBlock>(ss, scratch);
  const float scale = 1.0f / sqrtf(ss / static_cast<float>(n) + eps);
  for (int64_t i = threadIdx.x; i < n; i += kBlock) {
    yr[i] = xr[i] * scale * __ldg(weight + i);
  }
}

}  // namespace

absl::Status LaunchRmsNorm(const float* x, const float* weight, int64_t n_rows, int64_t n,
                           float eps, float* out, cudaStream_t stream) {
  if (n_rows < 0 || n < 0) return absl::InvalidArgumentError("LaunchRmsNorm: negative size");
  if (n_rows == 0 || n == 0) return absl::OkStatus();
  if (n_rows > INT_MAX) return absl::InvalidArgumentError("LaunchRmsNorm: too many rows");
  if (x == nullptr || weight == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("LaunchRmsNorm: null pointer");
  }
  const dim3 grid(static_cast<unsigned int>(n_rows));
  if (n <= 1024) {
    RmsNormKernel<128><<<grid, 128, 0, stream>>>(x, weight, n, eps, out);
  } else {
    RmsNormKernel<512><<<grid, 512, 0, stream>>>(x, weight, n, eps, out);
  }
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace m40llm::gpu
