// RoPE vs cpu::Rope on fresh random rows and positions (up to 10^5), both
// layouts, full and partial rotation, with and without frequency factors and
// scaling, inside wider rows (fused QKV) whose other values must not change.
// Tolerance: relative L2 <= 1e-5 (both compute the angle in FP64).
#include "cuda/rope.cuh"

#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "engine/cpu_ops.h"
#include "gtest/gtest.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/support/test_support.h"

namespace m40llm::gpu {
namespace {

using m40llm::testing::RandomFloats;
using m40llm::testing::ToDevice;
using m40llm::testing::ToHost;

constexpr double kTolerance = 1e-5;

struct Shape {
  int n_heads;
  int head_dim;
  int n_rot;
  int extra;  // values per row beyond the heads (another projection's columns)
};

TEST(Rope, MatchesCpuReference) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const Shape shapes[] = {{1, 2, 2, 0},   {8, 64, 64, 0},   {5, 128, 128, 3},
                          {4, 80, 32, 0}, {3, 96, 64, 130}, {32, 128, 128, 0}};
  double worst = 0;
  int cases = 0;
  for (const Shape& sh : shapes) {
    for (int64_t n_tok : {1, 3, 16, 64}) {
      for (bool neox : {false, true}) {
        for (int variant = 0; variant < 3; ++variant) {
          // 0: plain; 1: freq factors; 2: freq factors, freq_scale 0.25, base 5e5.
          SCOPED_TRACE(::testing::Message()
                       << "heads " << sh.n_heads << " head_dim " << sh.head_dim << " n_rot "
                       << sh.n_rot << " extra " << sh.extra << " n_tok " << n_tok << " neox "
                       << neox << " variant " << variant);
          const int64_t width = static_cast<int64_t>(sh.n_heads) * sh.head_dim + sh.extra;
          const std::vector<float> x = RandomFloats(rng, n_tok * width, -3.0f, 3.0f);
          std::uniform_int_distribution<int32_t> pick(0, 100000);
          std::vector<int32_t> pos(n_tok);
          for (int32_t& p : pos) p = pick(rng);
          pos[0] = 0;
          const std::vector<float> ff = RandomFloats(rng, sh.n_rot / 2, 1.0f, 8.0f);

          cpu::RopeParams p;
          p.n_rot = sh.n_rot;
          p.neox = neox;
          p.freq_factors = variant >= 1 ? ff.data() : nullptr;
          if (variant == 2) {
            p.freq_scale = 0.25f;
            p.freq_base = 500000.0f;
          }
          std::vector<float> want = x;
          for (int64_t t = 0; t < n_tok; ++t) {
            cpu::Rope(want.data() + t * width, sh.n_heads, sh.head_dim, pos[t], p);
          }

          M40_ASSERT_OK_AND_ASSIGN(auto d_x, ToDevice(x));
          M40_ASSERT_OK_AND_ASSIGN(auto d_pos, ToDevice(pos));
          M40_ASSERT_OK_AND_ASSIGN(auto d_ff, ToDevice(ff));
          RopeConfig cfg;
          cfg.n_rot = p.n_rot;
          cfg.freq_base = p.freq_base;
          cfg.freq_scale = p.freq_scale;
          cfg.freq_factors = variant >= 1 ? d_ff.get() : nullptr;
          cfg.neox = neox;
          M40_ASSERT_OK(LaunchRope(d_x.get(), n_tok, sh.n_heads, sh.head_dim, width, d_pos.get(),
                                   cfg, nullptr));
          M40_ASSERT_OK_AND_ASSIGN(auto got, ToHost(d_x));
          const double err = m40llm::testing::RelL2(got.data(), want.data(), want.size());
          EXPECT_LE(err, kTolerance);
          worst = std::max(worst, err);
          ++cases;
          // Values the rotation must not touch stay bit-identical.
          for (int64_t t = 0; t < n_tok; ++t) {
            for (int h = 0; h < sh.n_heads; ++h) {
              for (int d = sh.n_rot; d < sh.head_dim; ++d) {
                const int64_t i = t * width + static_cast<int64_t>(h) * sh.head_dim + d;
                ASSERT_EQ(got[i], x[i]) << "unrotated dim " << d;
              }
            }
            for (int64_t i = t * width + width - sh.extra; i < (t + 1) * width; ++i) {
              ASSERT_EQ(got[i], x[i]) << "value past the heads";
            }
          }
        }
      }
    }
  }
  std::printf("Rope worst relative L2 %.3g over %d cases (tolerance %.0e)\n", worst, cases,
              kTolerance);
}

TEST(Rope, RejectsBadArguments) {
  RopeConfig cfg;
  cfg.n_rot = 3;  // odd
  EXPECT_EQ(LaunchRope(nullptr, 1, 1, 4, 4, nullptr, cfg, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  cfg.n_rot = 8;  // > head_dim
  EXPECT_EQ(LaunchRope(nullptr, 1, 1, 4, 4, nullptr, cfg, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  cfg.n_rot = 4;  // row_stride too small
  EXPECT_EQ(LaunchRope(nullptr, 1, 2, 4, 7, nullptr, cfg, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace m40llm::gpu
