// CUDA error -> absl::Status conversion and sticky-error classification.
#include "cuda/cuda_check.h"

#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace m40llm::gpu {
namespace {

absl::StatusCode CodeFor(cudaError_t err) {
  if (IsStickyCudaError(err)) return absl::StatusCode::kInternal;
  switch (err) {
    case cudaErrorMemoryAllocation:
      return absl::StatusCode::kResourceExhausted;
    case cudaErrorInvalidValue:
    case cudaErrorInvalidConfiguration:
    case cudaErrorInvalidDevicePointer:
    case cudaErrorInvalidMemcpyDirection:
    case cudaErrorInvalidResourceHandle:
      return absl::StatusCode::kInvalidArgument;
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorInvalidDevice:
      return absl::StatusCode::kFailedPrecondition;
    case cudaErrorNotReady:
      return absl::StatusCode::kUnavailable;
    default:
      return absl::StatusCode::kInternal;
  }
}

}  // namespace

absl::Status CudaStatus(cudaError_t err, const char* expr, const char* file, int line) {
  if (err == cudaSuccess) return absl::OkStatus();
  absl::Status status(
      CodeFor(err),
      absl::StrCat(expr, " failed at ", file, ":", line, ": ", cudaGetErrorName(err), " (",
                   static_cast<int>(err), "): ", cudaGetErrorString(err),
                   IsStickyCudaError(err) ? " [sticky: the CUDA context is unusable]" : ""));
  status.SetPayload(kCudaErrorPayloadUrl, absl::Cord(absl::StrCat(static_cast<int>(err))));
  return status;
}

bool IsStickyCudaError(cudaError_t err) {
  switch (err) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorLaunchTimeout:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable:
    case cudaErrorNvlinkUncorrectable:
    case cudaErrorContextIsDestroyed:
#if CUDART_VERSION >= 12000
    case cudaErrorExternalDevice:
    case cudaErrorMpsClientTerminated:
#endif
      return true;
    default:
      return false;
  }
}

std::optional<cudaError_t> CudaErrorOf(const absl::Status& status) {
  const auto payload = status.GetPayload(kCudaErrorPayloadUrl);
  if (!payload.has_value()) return std::nullopt;
  int value = 0;
  if (!absl::SimpleAtoi(std::string(*payload), &value)) return std::nullopt;
  return static_cast<cudaError_t>(value);
}

bool IsStickyCudaFault(const absl::Status& status) {
  const std::optional<cudaError_t> err = CudaErrorOf(status);
  return err.has_value() && IsStickyCudaError(*err);
}

}  // namespace m40llm::gpu
