// RMSNorm kernel and launcher (see rmsnorm.cuh).
#include <climits>

#include "absl/strings/str_cat.h"
#include "cuda/cuda_check.h"
#include "cuda/kernel_util.h"
#include "cuda/rmsnorm.cuh"
#include "cuda/rmsnorm_device.cuh"

namespace m40llm::gpu {
namespace {

// One block per row (rmsnorm_device.cuh says why x and out may alias).
template <int kBlock, bool kAdd>
__global__ void __launch_bounds__(kBlock) RmsNormKernel(float* x,  // (n_rows, n)
                                                        const float* residual,  // (n_rows, n)
                                                        const float* __restrict__ weight,  // (n)
                                                        int64_t n, float eps,
                                                        float* out) {  // (n_rows, n)
  __shared__ float scratch[kBlock / internal::kWarpSize];
  rmsnorm::RmsNormRow<kBlock, kAdd>(blockIdx.x, x, residual, weight, n, eps, out, scratch);
}

template <bool kAdd>
absl::Status Launch(const char* what, float* x, const float* residual, const float* weight,
                    int64_t n_rows, int64_t n, float eps, float* out, cudaStream_t stream) {
  if (n_rows < 0 || n < 0) return absl::InvalidArgumentError(absl::StrCat(what, ": negative size"));
  if (n_rows == 0 || n == 0) return absl::OkStatus();
  if (n_rows > INT_MAX) return absl::InvalidArgumentError(absl::StrCat(what, ": too many rows"));
  if (x == nullptr || weight == nullptr || out == nullptr || (kAdd && residual == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": null pointer"));
  }
  const dim3 grid(static_cast<unsigned int>(n_rows));
  if (n <= 1024) {
    RmsNormKernel<128, kAdd><<<grid, 128, 0, stream>>>(x, residual, weight, n, eps, out);
  } else {
    RmsNormKernel<512, kAdd><<<grid, 512, 0, stream>>>(x, residual, weight, n, eps, out);
  }
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchRmsNorm(const float* x, const float* weight, int64_t n_rows, int64_t n,
                           float eps, float* out, cudaStream_t stream) {
  // The plain form never writes x.
  return Launch<false>("LaunchRmsNorm", const_cast<float*>(x), nullptr, weight, n_rows, n, eps,
                       out, stream);
}

absl::Status LaunchAddRmsNorm(float* x, const float* residual, const float* weight,
                              int64_t n_rows, int64_t n, float eps, float* out,
                              cudaStream_t stream) {
  if (out == x || out == residual) {
    return absl::InvalidArgumentError("LaunchAddRmsNorm: out must not alias x or residual");
  }
  return Launch<true>("LaunchAddRmsNorm", x, residual, weight, n_rows, n, eps, out, stream);
}

}  // namespace m40llm::gpu
