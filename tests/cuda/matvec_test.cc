// Skinny FP16-weight matrix product vs cpu::MatMul on fresh random weights and
// activations: n_tok 1, 2, 3, 4, 5, 8, 9, 16, 17, 64 (every kernel variant and
// partial token tiles); odd rows; cols multiples of 8 and not
// (4096 + 8 + 3 crosses a staging chunk and ends in a 3-column tail); weight
// rows packed (ld == cols), padded to 8 halves (16-byte path with tail), and
// misaligned (2-byte path). Padding holds NaN so a read past cols shows.
// Tolerance: relative L2 <= 1e-5 (FP32 sums in a different order).
// Batch invariance: a token's row is bit-identical alone and among 99 others.
#include "cuda/matvec.cuh"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "engine/cpu_ops.h"
#include "engine/thread_pool.h"
#include "gtest/gtest.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/support/test_support.h"

namespace m40llm::gpu {
namespace {

using m40llm::testing::PoisonedFloats;
using m40llm::testing::RandomFloats;
using m40llm::testing::RandomHalves;
using m40llm::testing::ToDevice;
using m40llm::testing::ToHost;

constexpr double kTolerance = 1e-5;
constexpr uint16_t kHalfNaN = 0x7e00;

enum class Layout { kPacked, kPadded8, kMisaligned };

const char* Name(Layout l) {
  switch (l) {
    case Layout::kPacked:
      return "packed";
    case Layout::kPadded8:
      return "padded8";
    case Layout::kMisaligned:
      return "misaligned";
  }
  return "?";
}

int64_t LdFor(Layout l, int64_t cols) {
  switch (l) {
    case Layout::kPacked:
      return cols;
    case Layout::kPadded8:
      return (cols + 7) / 8 * 8;
    case Layout::kMisaligned:
      return cols % 8 == 0 ? cols + 1 : cols;  // never a multiple of 8
  }
  return cols;
}

struct Shape {
  int64_t rows;
  int64_t cols;
};

double RunCase(ThreadPool& pool, std::mt19937& rng, const Shape& sh, Layout layout, int64_t n_tok) {
  WeightMatrix w;
  w.rows = sh.rows;
  w.cols = sh.cols;
  w.data = RandomHalves(rng, sh.rows * sh.cols, -1.0f, 1.0f);
  const std::vector<float> x = RandomFloats(rng, n_tok * sh.cols, -1.0f, 1.0f);
  std::vector<float> want(n_tok * sh.rows);
  cpu::MatMul(pool, w, x.data(), n_tok, want.data());

  const int64_t ld = LdFor(layout, sh.cols);
  std::vector<uint16_t> strided(sh.rows * ld, kHalfNaN);
  for (int64_t r = 0; r < sh.rows; ++r) {
    std::copy_n(w.data.begin() + r * sh.cols, sh.cols, strided.begin() + r * ld);
  }
  auto d_w = ToDevice(strided);
  auto d_x = ToDevice(x);
  auto d_y = PoisonedFloats(want.size());
  if (!d_w.ok() || !d_x.ok() || !d_y.ok()) {
    ADD_FAILURE() << "device setup failed";
    return 1e30;
  }
  const absl::Status launched =
      LaunchMatVecF16(d_w->get(), sh.rows, sh.cols, ld, d_x->get(), n_tok, d_y->get(), nullptr);
  if (!launched.ok()) {
    ADD_FAILURE() << launched;
    return 1e30;
  }
  auto got = ToHost(*d_y);
  if (!got.ok()) {
    ADD_FAILURE() << got.status();
    return 1e30;
  }
  return m40llm::testing::RelL2(got->data(), want.data(), want.size());
}

void RunShapes(const std::vector<Shape>& shapes, const std::vector<Layout>& layouts,
               const char* label) {
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  ThreadPool pool;
  double worst = 0;
  int cases = 0;
  for (const Shape& sh : shapes) {
    for (Layout layout : layouts) {
      for (int64_t n_tok : {1, 2, 3, 4, 5, 8, 9, 16, 17, 64}) {
        SCOPED_TRACE(::testing::Message() << "rows " << sh.rows << " cols " << sh.cols << " "
                                          << Name(layout) << " n_tok " << n_tok);
        const double err = RunCase(pool, rng, sh, layout, n_tok);
        EXPECT_LE(err, kTolerance);
        worst = std::max(worst, err);
        ++cases;
      }
    }
  }
  std::printf("MatVecF16 %s: worst relative L2 %.3g over %d cases (tolerance %.0e)\n", label, worst,
              cases, kTolerance);
}

TEST(MatVecF16, SmallAndOddShapes) {
  M40_REQUIRE_CUDA_DEVICE();
  RunShapes({{1, 1}, {3, 7}, {37, 64}, {17, 8}, {129, 255}, {16, 256}, {33, 1000}},
            {Layout::kPacked, Layout::kPadded8, Layout::kMisaligned}, "small");
}

TEST(MatVecF16, ModelSizedShapes) {
  M40_REQUIRE_CUDA_DEVICE();
  RunShapes({{1000, 4096}, {515, 4096 + 8 + 3}, {64, 11008}, {4099, 512}},
            {Layout::kPacked, Layout::kPadded8, Layout::kMisaligned}, "model-sized");
}

// Each of 100 tokens alone (the one-token kernel) and all together (8-token
// tiles) must give bit-identical rows; see matvec.cuh.
TEST(MatVecF16, RowsIndependentOfBatch) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  constexpr int64_t kTok = 100;
  for (Layout layout : {Layout::kPadded8, Layout::kMisaligned}) {
    SCOPED_TRACE(Name(layout));
    const int64_t rows = 517;
    const int64_t cols = 2051;
    const int64_t ld = LdFor(layout, cols);
    const std::vector<uint16_t> w = RandomHalves(rng, rows * ld, -1.0f, 1.0f);
    const std::vector<float> x = RandomFloats(rng, kTok * cols, -1.0f, 1.0f);
    M40_ASSERT_OK_AND_ASSIGN(auto d_w, ToDevice(w));
    M40_ASSERT_OK_AND_ASSIGN(auto d_x, ToDevice(x));
    M40_ASSERT_OK_AND_ASSIGN(auto d_all, PoisonedFloats(kTok * rows));
    M40_ASSERT_OK_AND_ASSIGN(auto d_one, PoisonedFloats(kTok * rows));
    M40_ASSERT_OK(
        LaunchMatVecF16(d_w.get(), rows, cols, ld, d_x.get(), kTok, d_all.get(), nullptr));
    for (int64_t t = 0; t < kTok; ++t) {
      M40_ASSERT_OK(LaunchMatVecF16(d_w.get(), rows, cols, ld, d_x.get() + t * cols, 1,
                                    d_one.get() + t * rows, nullptr));
    }
    M40_ASSERT_OK_AND_ASSIGN(auto all, ToHost(d_all));
    M40_ASSERT_OK_AND_ASSIGN(auto one, ToHost(d_one));
    for (int64_t t = 0; t < kTok; ++t) {
      EXPECT_EQ(std::memcmp(all.data() + t * rows, one.data() + t * rows, sizeof(float) * rows), 0)
          << "token " << t;
    }
  }
}

TEST(MatVecF16, ZeroColumnsGiveZeros) {
  M40_REQUIRE_CUDA_DEVICE();
  M40_ASSERT_OK_AND_ASSIGN(auto d_y, PoisonedFloats(3 * 5));
  M40_ASSERT_OK_AND_ASSIGN(auto d_w, PoisonedFloats(1));
  M40_ASSERT_OK_AND_ASSIGN(auto d_x, PoisonedFloats(1));
  M40_ASSERT_OK(LaunchMatVecF16(reinterpret_cast<const uint16_t*>(d_w.get()), 5, 0, 0, d_x.get(), 3,
                                d_y.get(), nullptr));
  M40_ASSERT_OK_AND_ASSIGN(auto got, ToHost(d_y));
  for (float v : got) EXPECT_EQ(v, 0.0f);
}

TEST(MatVecF16, RejectsBadArguments) {
  EXPECT_EQ(LaunchMatVecF16(nullptr, 4, 8, 8, nullptr, 1, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LaunchMatVecF16(nullptr, 4, 8, 7, nullptr, 1, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(LaunchMatVecF16(nullptr, 4, 8, 8, nullptr, 0, nullptr, nullptr).ok());
}

}  // namespace
}  // namespace m40llm::gpu
