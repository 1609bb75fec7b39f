// SwiGLU vs cpu::SwiGlu and the residual add vs plain FP32 addition, on fresh
// random inputs. Tolerances: SwiGLU relative L2 <= 1e-5 (expf differs from
// the host's by a few ulp); the add is exact (one correctly rounded add).
#include "cuda/elementwise.cuh"

#include <cstdint>
#include <cstdio>
#include <random>
#include <tuple>
#include <vector>

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

constexpr double kSwiGluTolerance = 1e-5;
const int64_t kSizes[] = {1, 7, 1000, 3 * 4096 + 5, 11008 * 16 + 1, int64_t{1} << 22};

TEST(SwiGlu, MatchesCpuReference) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  double worst = 0;
  for (int64_t n : kSizes) {
    for (int alias = 0; alias < 3; ++alias) {  // out separate, out == gate, out == up
      SCOPED_TRACE(::testing::Message() << "n " << n << " alias " << alias);
      const std::vector<float> gate = RandomFloats(rng, n, -8.0f, 8.0f);
      const std::vector<float> up = RandomFloats(rng, n, -2.0f, 2.0f);
      std::vector<float> want(n);
      cpu::SwiGlu(gate.data(), up.data(), n, want.data());
      M40_ASSERT_OK_AND_ASSIGN(auto d_gate, ToDevice(gate));
      M40_ASSERT_OK_AND_ASSIGN(auto d_up, ToDevice(up));
      M40_ASSERT_OK_AND_ASSIGN(auto d_out, PoisonedFloats(n));
      auto& out = alias == 0 ? d_out : alias == 1 ? d_gate : d_up;
      M40_ASSERT_OK(LaunchSwiGlu(d_gate.get(), d_up.get(), n, out.get(), nullptr));
      M40_ASSERT_OK_AND_ASSIGN(auto got, ToHost(out));
      const double err = m40llm::testing::RelL2(got.data(), want.data(), n);
      EXPECT_LE(err, kSwiGluTolerance);
      worst = std::max(worst, err);
    }
  }
  std::printf("SwiGlu worst relative L2 %.3g (tolerance %.0e)\n", worst, kSwiGluTolerance);
}

// The fused gate/up form gives the same bits as LaunchSwiGlu on the halves.
TEST(SwiGlu, RowsOfFusedGateUpMatchSeparateHalves) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  for (const auto& [rows, n] : {std::pair<int64_t, int64_t>{1, 5632}, {7, 100}, {64, 33}}) {
    const std::vector<float> gu = RandomFloats(rng, static_cast<size_t>(rows * 2 * n), -8, 8);
    std::vector<float> gate, up;
    for (int64_t r = 0; r < rows; ++r) {
      gate.insert(gate.end(), gu.begin() + r * 2 * n, gu.begin() + r * 2 * n + n);
      up.insert(up.end(), gu.begin() + r * 2 * n + n, gu.begin() + (r + 1) * 2 * n);
    }
    M40_ASSERT_OK_AND_ASSIGN(auto d_gu, ToDevice(gu));
    M40_ASSERT_OK_AND_ASSIGN(auto d_gate, ToDevice(gate));
    M40_ASSERT_OK_AND_ASSIGN(auto d_up, ToDevice(up));
    M40_ASSERT_OK_AND_ASSIGN(auto fused, PoisonedFloats(static_cast<size_t>(rows * n)));
    M40_ASSERT_OK_AND_ASSIGN(auto separate, PoisonedFloats(static_cast<size_t>(rows * n)));
    M40_ASSERT_OK(LaunchSwiGluRows(d_gu.get(), rows, n, fused.get(), nullptr));
    M40_ASSERT_OK(LaunchSwiGlu(d_gate.get(), d_up.get(), rows * n, separate.get(), nullptr));
    M40_ASSERT_OK_AND_ASSIGN(auto a, ToHost(fused));
    M40_ASSERT_OK_AND_ASSIGN(auto b, ToHost(separate));
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << rows << "x" << n;
    EXPECT_FALSE(std::isnan(a[0]));
  }
  EXPECT_EQ(LaunchSwiGluRows(nullptr, 1, 1, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Add, IsExact) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  for (int64_t n : kSizes) {
    for (bool in_place : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "n " << n << " in_place " << in_place);
      const std::vector<float> a = RandomFloats(rng, n, -10.0f, 10.0f);
      const std::vector<float> b = RandomFloats(rng, n, -1.0f, 1.0f);
      std::vector<float> want(n);
      for (int64_t i = 0; i < n; ++i) want[i] = a[i] + b[i];
      M40_ASSERT_OK_AND_ASSIGN(auto d_a, ToDevice(a));
      M40_ASSERT_OK_AND_ASSIGN(auto d_b, ToDevice(b));
      M40_ASSERT_OK_AND_ASSIGN(auto d_out, PoisonedFloats(n));
      auto& out = in_place ? d_a : d_out;
      M40_ASSERT_OK(LaunchAdd(d_a.get(), d_b.get(), n, out.get(), nullptr));
      M40_ASSERT_OK_AND_ASSIGN(auto got, ToHost(out));
      EXPECT_EQ(m40llm::testing::RelL2(got.data(), want.data(), n), 0.0);
    }
  }
}

// x + bias on every row, exactly; the padding between rows stays as it was.
TEST(AddBiasRows, IsExactAndTouchesOnlyTheRows) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  for (const auto& [rows, n, stride] :
       {std::tuple<int64_t, int64_t, int64_t>{1, 128, 128}, {7, 100, 133}, {64, 1152, 1152},
        {3, 5, 9}}) {
    SCOPED_TRACE(::testing::Message() << rows << " rows of " << n << ", stride " << stride);
    const std::vector<float> x = RandomFloats(rng, rows * stride, -4.0f, 4.0f);
    const std::vector<float> bias = RandomFloats(rng, n, -1.0f, 1.0f);
    std::vector<float> want = x;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < n; ++c) want[r * stride + c] += bias[c];
    }
    M40_ASSERT_OK_AND_ASSIGN(auto d_x, ToDevice(x));
    M40_ASSERT_OK_AND_ASSIGN(auto d_bias, ToDevice(bias));
    M40_ASSERT_OK(LaunchAddBiasRows(d_x.get(), rows, n, stride, d_bias.get(), nullptr));
    M40_ASSERT_OK_AND_ASSIGN(auto got, ToHost(d_x));
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << "element " << i;
  }
  EXPECT_EQ(LaunchAddBiasRows(nullptr, 2, 4, 3, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Elementwise, RejectsBadArguments) {
  EXPECT_EQ(LaunchSwiGlu(nullptr, nullptr, 4, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LaunchAdd(nullptr, nullptr, -1, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(LaunchAdd(nullptr, nullptr, 0, nullptr, nullptr).ok());
}

}  // namespace
}  // namespace m40llm::gpu
