// SwiGLU and residual-add kernels and launchers (see elementwise.cuh). The
// pointers are not __restrict__ (elementwise_device.cuh says why).
#include "absl/strings/str_cat.h"
#include "cuda/cuda_check.h"
#include "cuda/elementwise.cuh"
#include "cuda/elementwise_device.cuh"
#include "cuda/kernel_util.h"

namespace m40llm::gpu {
namespace {

constexpr int kElementwiseBlock = 256;

// Each kernel is one grid-stride loop (elementwise_device.cuh).
template <int kBlock>
__global__ void __launch_bounds__(kBlock)
    SwiGluKernel(const float* gate, const float* up, int64_t n, float* out) {  // all (n)
  elementwise::SwiGluStrided<kBlock>(blockIdx.x, gridDim.x, gate, up, n, out);
}

template <int kBlock>
__global__ void __launch_bounds__(kBlock)
    SwiGluRowsKernel(const float* gate_up,  // (n_rows, 2 n): gate then up, per row
                     int64_t n_rows, int64_t n,
                     float* out) {  // (n_rows, n)
  elementwise::SwiGluRowsStrided<kBlock>(blockIdx.x, gridDim.x, gate_up, n_rows, n, out);
}

template <int kBlock>
__global__ void __launch_bounds__(kBlock)
    AddBiasRowsKernel(float* x,  // (n_rows, row_stride)
                      int64_t n_rows, int64_t n, int64_t row_stride,
                      const float* bias) {  // (n)
  elementwise::AddBiasRowsStrided<kBlock>(blockIdx.x, gridDim.x, x, n_rows, n, row_stride, bias);
}

template <int kBlock>
__global__ void __launch_bounds__(kBlock)
    AddKernel(const float* a, const float* b, int64_t n, float* out) {  // all (n)
  elementwise::AddStrided<kBlock>(blockIdx.x, gridDim.x, a, b, n, out);
}

absl::Status CheckArgs(const char* what, const float* p, const float* q, int64_t n,
                       const float* out) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat(what, ": negative size"));
  if (n > 0 && (p == nullptr || q == nullptr || out == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": null pointer"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchSwiGlu(const float* gate, const float* up, int64_t n, float* out,
                          cudaStream_t stream) {
  if (absl::Status s = CheckArgs("LaunchSwiGlu", gate, up, n, out); !s.ok()) return s;
  if (n == 0) return absl::OkStatus();
  SwiGluKernel<kElementwiseBlock>
      <<<internal::GridStrideBlocks(n, kElementwiseBlock), kElementwiseBlock, 0, stream>>>(gate, up,
                                                                                           n, out);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

absl::Status LaunchSwiGluRows(const float* gate_up, int64_t n_rows, int64_t n, float* out,
                              cudaStream_t stream) {
  if (n_rows < 0) return absl::InvalidArgumentError("LaunchSwiGluRows: negative n_rows");
  if (absl::Status s = CheckArgs("LaunchSwiGluRows", gate_up, gate_up, n, out); !s.ok()) return s;
  if (n == 0 || n_rows == 0) return absl::OkStatus();
  if (gate_up == out) {
    return absl::InvalidArgumentError("LaunchSwiGluRows: out must not alias gate_up");
  }
  SwiGluRowsKernel<kElementwiseBlock>
      <<<internal::GridStrideBlocks(n_rows * n, kElementwiseBlock), kElementwiseBlock, 0,
         stream>>>(gate_up, n_rows, n, out);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

absl::Status LaunchAddBiasRows(float* x, int64_t n_rows, int64_t n, int64_t row_stride,
                               const float* bias, cudaStream_t stream) {
  if (n_rows < 0 || n < 0 || row_stride < n) {
    return absl::InvalidArgumentError(
        "LaunchAddBiasRows: sizes must be non-negative with row_stride >= n");
  }
  if (n_rows == 0 || n == 0) return absl::OkStatus();
  if (x == nullptr || bias == nullptr) {
    return absl::InvalidArgumentError("LaunchAddBiasRows: null pointer");
  }
  AddBiasRowsKernel<kElementwiseBlock>
      <<<internal::GridStrideBlocks(n_rows * n, kElementwiseBlock), kElementwiseBlock, 0,
         stream>>>(x, n_rows, n, row_stride, bias);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

absl::Status LaunchAdd(const float* a, const float* b, int64_t n, float* out, cudaStream_t stream) {
  if (absl::Status s = CheckArgs("LaunchAdd", a, b, n, out); !s.ok()) return s;
  if (n == 0) return absl::OkStatus();
  AddKernel<kElementwiseBlock>
      <<<internal::GridStrideBlocks(n, kElementwiseBlock), kElementwiseBlock, 0, stream>>>(a, b, n,
                                                                                           out);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace m40llm::gpu
