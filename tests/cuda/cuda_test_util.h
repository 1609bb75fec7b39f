// Helpers for the GPU kernel tests: skipping where no CUDA device is present,
// status assertions, fresh random inputs, and device upload/download.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cuda/device_memory.h"
#include "engine/fp16.h"
#include "engine/status.h"
#include "gtest/gtest.h"

namespace m40llm::testing {

// Why the CUDA tests cannot run here (no driver, no device), or nullopt.
inline std::optional<std::string> NoCudaDeviceReason() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    static_cast<void>(cudaGetLastError());  // clear it; it is not sticky
    return std::string("no usable CUDA device (cudaGetDeviceCount: ") + cudaGetErrorName(err) +
           ": " + cudaGetErrorString(err) + ")";
  }
  if (count == 0) return std::string("no CUDA device (cudaGetDeviceCount returned 0)");
  return std::nullopt;
}

// A seed for fresh random inputs: $M40LLM_TEST_SEED when set (to replay a
// failure), otherwise a new one each run. Tests SCOPED_TRACE it.
inline uint32_t TestSeed() {
  if (const char* s = std::getenv("M40LLM_TEST_SEED")) {
    return static_cast<uint32_t>(std::strtoul(s, nullptr, 10));
  }
  return std::random_device{}();
}

inline std::vector<float> RandomFloats(std::mt19937& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& f : v) f = dist(rng);
  return v;
}

// FP16 bits of uniform values in [lo, hi].
inline std::vector<uint16_t> RandomHalves(std::mt19937& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<uint16_t> v(n);
  for (uint16_t& h : v) h = FloatToHalf(dist(rng));
  return v;
}

template <typename T>
absl::StatusOr<gpu::DeviceBuffer<T>> ToDevice(const std::vector<T>& host) {
  ASSIGN_OR_RETURN(gpu::DeviceBuffer<T> buf, gpu::DeviceBuffer<T>::Allocate(host.size()));
  RETURN_IF_ERROR(buf.CopyFromHost(host.data(), host.size()));
  return buf;
}

template <typename T>
absl::StatusOr<std::vector<T>> ToHost(const gpu::DeviceBuffer<T>& buf) {
  std::vector<T> host(buf.size());
  RETURN_IF_ERROR(buf.CopyToHost(host.data(), host.size()));
  return host;
}

// n floats of device memory with every bit set: a NaN in each element, so an
// element the kernel fails to write makes the comparison fail.
inline absl::StatusOr<gpu::DeviceBuffer<float>> PoisonedFloats(size_t n) {
  ASSIGN_OR_RETURN(gpu::DeviceBuffer<float> buf, gpu::DeviceBuffer<float>::Allocate(n));
  RETURN_IF_ERROR(buf.FillBytes(0xff));
  return buf;
}

}  // namespace m40llm::testing

// Skips the current test, with the reason in the output, without a device.
#define M40_REQUIRE_CUDA_DEVICE()                                     \
  do {                                                                \
    if (auto m40_no_dev_ = ::m40llm::testing::NoCudaDeviceReason()) { \
      GTEST_SKIP() << *m40_no_dev_;                                   \
    }                                                                 \
  } while (0)

#define M40_ASSERT_OK(expr)                                \
  do {                                                     \
    const ::absl::Status m40_st_ = (expr);                 \
    ASSERT_TRUE(m40_st_.ok()) << #expr << ": " << m40_st_; \
  } while (0)

// `M40_ASSERT_OK_AND_ASSIGN(auto x, MakeX());` asserts the StatusOr is OK.
#define M40_ASSERT_OK_AND_ASSIGN(lhs, rexpr) \
  M40_ASSERT_OK_AND_ASSIGN_IMPL_(M40_CONCAT_(m40_test_so_, __LINE__), lhs, rexpr)
#define M40_ASSERT_OK_AND_ASSIGN_IMPL_(tmp, lhs, rexpr)    \
  auto tmp = (rexpr);                                      \
  ASSERT_TRUE(tmp.ok()) << #rexpr << ": " << tmp.status(); \
  lhs = std::move(tmp).value()
