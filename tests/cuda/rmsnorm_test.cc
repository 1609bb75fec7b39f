// RMSNorm vs cpu::RmsNorm on fresh random rows, out of place and in place.
// Tolerance: relative L2 <= 1e-5 (FP32 sum vs the reference's double sum).
#include "cuda/rmsnorm.cuh"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cuda/elementwise.cuh"
#include "engine/cpu_ops.h"
#include "gtest/gtest.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/support/test_support.h"

namespace m40llm::gpu {
namespace {

using m40llm::testing::PoisonedFloats;
using m40llm::testing::RandomFloats;
using m40llm::testing::ToDevice;
using m40llm::testing::ToHost;

constexpr double kTolerance = 1e-5;

TEST(RmsNorm, MatchesCpuReference) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  double worst = 0;
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{64}, int64_t{1000}, int64_t{1024},
                    int64_t{4096 + 8 + 3}, int64_t{8192}}) {
    for (int64_t rows : {1, 3, 17, 64}) {
      for (float eps : {1e-5f, 1e-6f}) {
        for (bool in_place : {false, true}) {
          SCOPED_TRACE(::testing::Message() << "n " << n << " rows " << rows << " eps " << eps
                                            << " in_place " << in_place);
          const std::vector<float> x = RandomFloats(rng, rows * n, -2.0f, 2.0f);
          const std::vector<float> w = RandomFloats(rng, n, 0.5f, 1.5f);
          std::vector<float> want(rows * n);
          for (int64_t r = 0; r < rows; ++r) {
            cpu::RmsNorm(x.data() + r * n, w.data(), n, eps, want.data() + r * n);
          }
          M40_ASSERT_OK_AND_ASSIGN(auto d_x, ToDevice(x));
          M40_ASSERT_OK_AND_ASSIGN(auto d_w, ToDevice(w));
          M40_ASSERT_OK_AND_ASSIGN(auto d_out, PoisonedFloats(want.size()));
          float* out = in_place ? d_x.get() : d_out.get();
          M40_ASSERT_OK(LaunchRmsNorm(d_x.get(), d_w.get(), rows, n, eps, out, nullptr));
          M40_ASSERT_OK_AND_ASSIGN(auto got, ToHost(in_place ? d_x : d_out));
          const double err = m40llm::testing::RelL2(got.data(), want.data(), want.size());
          EXPECT_LE(err, kTolerance);
          worst = std::max(worst, err);
        }
      }
    }
  }
  std::printf("RmsNorm worst relative L2 %.3g (tolerance %.0e)\n", worst, kTolerance);
}

// The fused residual add gives the same bits as LaunchAdd then LaunchRmsNorm,
// in x and in the output, on both block sizes.
TEST(RmsNorm, AddFusedMatchesAddThenNorm) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  for (const auto& [rows, n] : {std::pair<int64_t, int64_t>{1, 4096}, {5, 1000}, {33, 2048},
                                {2, 7}}) {
    const std::vector<float> x = RandomFloats(rng, static_cast<size_t>(rows * n), -3, 3);
    const std::vector<float> r = RandomFloats(rng, static_cast<size_t>(rows * n), -3, 3);
    const std::vector<float> w = RandomFloats(rng, static_cast<size_t>(n), 0.5f, 1.5f);
    M40_ASSERT_OK_AND_ASSIGN(auto x1, ToDevice(x));
    M40_ASSERT_OK_AND_ASSIGN(auto x2, ToDevice(x));
    M40_ASSERT_OK_AND_ASSIGN(auto d_r, ToDevice(r));
    M40_ASSERT_OK_AND_ASSIGN(auto d_w, ToDevice(w));
    M40_ASSERT_OK_AND_ASSIGN(auto out1, PoisonedFloats(x.size()));
    M40_ASSERT_OK_AND_ASSIGN(auto out2, PoisonedFloats(x.size()));
    M40_ASSERT_OK(LaunchAddRmsNorm(x1.get(), d_r.get(), d_w.get(), rows, n, 1e-5f, out1.get(),
                                   nullptr));
    M40_ASSERT_OK(LaunchAdd(x2.get(), d_r.get(), rows * n, x2.get(), nullptr));
    M40_ASSERT_OK(LaunchRmsNorm(x2.get(), d_w.get(), rows, n, 1e-5f, out2.get(), nullptr));
    M40_ASSERT_OK_AND_ASSIGN(auto hx1, ToHost(x1));
    M40_ASSERT_OK_AND_ASSIGN(auto hx2, ToHost(x2));
    M40_ASSERT_OK_AND_ASSIGN(auto ho1, ToHost(out1));
    M40_ASSERT_OK_AND_ASSIGN(auto ho2, ToHost(out2));
    EXPECT_EQ(std::memcmp(hx1.data(), hx2.data(), hx1.size() * sizeof(float)), 0) << rows << "x" << n;
    EXPECT_EQ(std::memcmp(ho1.data(), ho2.data(), ho1.size() * sizeof(float)), 0) << rows << "x" << n;
    EXPECT_FALSE(std::isnan(ho1.back()));
  }
  M40_ASSERT_OK_AND_ASSIGN(auto buf, PoisonedFloats(8));
  EXPECT_EQ(LaunchAddRmsNorm(buf.get(), buf.get(), buf.get(), 1, 8, 1e-5f, buf.get(), nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RmsNorm, RejectsBadArguments) {
  EXPECT_EQ(LaunchRmsNorm(nullptr, nullptr, 1, 4, 1e-5f, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LaunchRmsNorm(nullptr, nullptr, -1, 4, 1e-5f, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace m40llm::gpu
