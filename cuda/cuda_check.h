// CUDA runtime errors as absl::Status, at one boundary: every CUDA call in
// host code goes through CUDA_RETURN_IF_ERROR (or CudaStatus), so a failure
// carries the expression, file:line and CUDA's own name and message.
//
// Sticky errors (a kernel faulted: illegal address, launch failure, ...) leave
// the CUDA context unusable until the process recreates it; callers tell them
// apart with IsStickyCudaError / IsStickyCudaFault and mark the engine
// unhealthy instead of retrying. C++17: CUDA sources include this header.
#pragma once

#include <cuda_runtime_api.h>

#include <optional>

#include "absl/status/status.h"

namespace m40llm::gpu {

// Payload type URL under which a CUDA status stores the numeric cudaError_t.
inline constexpr char kCudaErrorPayloadUrl[] = "type.m40llm/cuda_error";

// OkStatus for cudaSuccess; otherwise a status whose message reads
// "<expr> failed at <file>:<line>: <cudaErrorName> (<n>): <message>", whose
// code follows the error's kind (ResourceExhausted for out-of-memory,
// InvalidArgument for bad values, FailedPrecondition for no device or driver,
// Internal for sticky faults and the rest), with the error number as payload.
[[nodiscard]] absl::Status CudaStatus(cudaError_t err, const char* expr, const char* file,
                                      int line);

// True for errors that corrupt the CUDA context: every later call in this
// process fails the same way, so the device needs a fresh context.
bool IsStickyCudaError(cudaError_t err);

// The cudaError_t a status from CudaStatus carries; nullopt for other statuses.
std::optional<cudaError_t> CudaErrorOf(const absl::Status& status);

// True when `status` came from CudaStatus with a sticky error.
bool IsStickyCudaFault(const absl::Status& status);

}  // namespace m40llm::gpu

// Returns a status from the enclosing function when `expr` (a cudaError_t) is
// not cudaSuccess.
#define CUDA_RETURN_IF_ERROR(expr)                                                \
  do {                                                                            \
    const cudaError_t m40_cuda_err_ = (expr);                                     \
    if (m40_cuda_err_ != cudaSuccess) {                                           \
      return ::m40llm::gpu::CudaStatus(m40_cuda_err_, #expr, __FILE__, __LINE__); \
    }                                                                             \
  } while (0)

// Checks the launch that just happened (bad configuration, no kernel image for
// this device) without synchronising; faults inside the kernel surface at the
// next synchronising call.
#define CUDA_RETURN_IF_LAUNCH_ERROR() CUDA_RETURN_IF_ERROR(cudaGetLastError())
