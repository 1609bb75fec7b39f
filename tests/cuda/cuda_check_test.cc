// CUDA error -> status conversion; runs without a device (no CUDA context).
#include "cuda/cuda_check.h"

#include <string>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace m40llm::gpu {
namespace {

absl::Status FailsWith(cudaError_t err) {
  CUDA_RETURN_IF_ERROR(err);
  return absl::OkStatus();
}

TEST(CudaCheck, SuccessIsOk) {
  EXPECT_TRUE(CudaStatus(cudaSuccess, "x", "f.cc", 1).ok());
  EXPECT_TRUE(FailsWith(cudaSuccess).ok());
}

TEST(CudaCheck, MessageCarriesExpressionLocationAndCudaText) {
  const absl::Status s = CudaStatus(cudaErrorMemoryAllocation, "cudaMalloc(&p, n)", "a.cc", 42);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  const std::string msg(s.message());
  EXPECT_TRUE(absl::StrContains(msg, "cudaMalloc(&p, n)")) << msg;
  EXPECT_TRUE(absl::StrContains(msg, "a.cc:42")) << msg;
  EXPECT_TRUE(absl::StrContains(msg, "cudaErrorMemoryAllocation")) << msg;
  EXPECT_FALSE(IsStickyCudaFault(s));
  ASSERT_TRUE(CudaErrorOf(s).has_value());
  EXPECT_EQ(*CudaErrorOf(s), cudaErrorMemoryAllocation);
}

TEST(CudaCheck, MacroReturnsStatusWithItsExpression) {
  const absl::Status s = FailsWith(cudaErrorInvalidValue);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(s.message(), "err failed at ")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "cuda_check_test.cc:")) << s;
}

TEST(CudaCheck, StickyErrorsAreTold) {
  for (cudaError_t e : {cudaErrorIllegalAddress, cudaErrorLaunchFailure, cudaErrorMisalignedAddress,
                        cudaErrorIllegalInstruction, cudaErrorHardwareStackError, cudaErrorAssert,
                        cudaErrorLaunchTimeout, cudaErrorECCUncorrectable}) {
    EXPECT_TRUE(IsStickyCudaError(e)) << cudaGetErrorName(e);
    const absl::Status s = CudaStatus(e, "k<<<>>>", "k.cu", 7);
    EXPECT_TRUE(IsStickyCudaFault(s)) << s;
    EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  }
  for (cudaError_t e : {cudaErrorMemoryAllocation, cudaErrorInvalidValue, cudaErrorNotReady,
                        cudaErrorNoDevice, cudaErrorInvalidConfiguration}) {
    EXPECT_FALSE(IsStickyCudaError(e)) << cudaGetErrorName(e);
  }
  EXPECT_EQ(CudaStatus(cudaErrorNoDevice, "x", "f", 1).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(CudaCheck, OtherStatusesCarryNoCudaError) {
  EXPECT_FALSE(CudaErrorOf(absl::InternalError("x")).has_value());
  EXPECT_FALSE(IsStickyCudaFault(absl::InternalError("x")));
  EXPECT_FALSE(IsStickyCudaFault(absl::OkStatus()));
}

}  // namespace
}  // namespace m40llm::gpu
