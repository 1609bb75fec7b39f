// Tiled FP16-weight GEMM (LaunchGemmF16, every tile) and the engine's entry
// LaunchMatMulF16 against a double-precision CPU reference on fresh random
// weights and activations: odd shapes (rows 1, 7, 33; cols 8, 9, 100; n_tok
// 1, 3, 65, 129, 513), weight rows packed, padded past cols (padding holds NaN
// so a read past cols shows) and misaligned (odd ld, base pointer and x off
// 16 bytes: the scalar path). Outputs start as NaN. Tolerance: relative L2
// <= 1e-5 against the double reference (FP32 FMA chains over <= 11008 terms
// of values in [-1, 1] stay near 5e-6).
//
// Batch invariance: for n_tok <= kMatMulSkinnyMaxTokens, LaunchMatMulF16 must
// give a token's row bit-identical alone and in batches of 2, 5, 17 and 64 of
// other tokens in any order; the GEMM's rows must not depend on the batch or
// the tile either.
#include "cuda/gemm.cuh"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "engine/fp16.h"
#include "gtest/gtest.h"
#include "tests/cuda/cuda_test_util.h"

namespace m40llm::gpu {
namespace {

using m40llm::testing::PoisonedFloats;
using m40llm::testing::RandomFloats;
using m40llm::testing::RandomHalves;
using m40llm::testing::ToDevice;
using m40llm::testing::ToHost;

constexpr double kTolerance = 1e-5;
constexpr uint16_t kHalfNaN = 0x7e00;

enum class Layout {
  kPacked,      // ld == cols
  kPadded,      // ld = cols rounded up to 8, plus 8 (NaN padding)
  kMisaligned,  // odd-ish ld, w and x base pointers off 16-byte alignment
};

const char* Name(Layout l) {
  switch (l) {
    case Layout::kPacked:
      return "packed";
    case Layout::kPadded:
      return "padded";
    case Layout::kMisaligned:
      return "misaligned";
  }
  return "?";
}

const char* Name(GemmTile t) {
  switch (t) {
    case GemmTile::kAuto:
      return "auto";
    case GemmTile::k128x128:
      return "128x128";
    case GemmTile::k64x128:
      return "64x128";
    case GemmTile::k64x64:
      return "64x64";
  }
  return "?";
}

// A weight matrix on the device in a given layout, with its values for the
// reference.
struct Weights {
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t ld = 0;
  int64_t offset = 0;          // halves before row 0 in the device buffer
  std::vector<double> values;  // (rows, cols)
  DeviceBuffer<uint16_t> device;
  const uint16_t* ptr() const { return device.get() + offset; }
};

absl::StatusOr<Weights> MakeWeights(std::mt19937& rng, int64_t rows, int64_t cols, Layout layout) {
  Weights w;
  w.rows = rows;
  w.cols = cols;
  switch (layout) {
    case Layout::kPacked:
      w.ld = cols;
      break;
    case Layout::kPadded:
      w.ld = (cols + 7) / 8 * 8 + 8;
      break;
    case Layout::kMisaligned:
      w.ld = cols % 8 == 0 ? cols + 1 : cols;
      w.offset = 1;
      break;
  }
  const std::vector<uint16_t> packed = RandomHalves(rng, rows * cols, -1.0f, 1.0f);
  std::vector<uint16_t> strided(w.offset + rows * w.ld, kHalfNaN);
  w.values.resize(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      strided[w.offset + r * w.ld + c] = packed[r * cols + c];
      w.values[r * cols + c] = HalfToFloat(packed[r * cols + c]);
    }
  }
  ASSIGN_OR_RETURN(w.device, ToDevice(strided));
  return w;
}

// Activations on the device, one float early when misaligned.
struct Activations {
  std::vector<float> host;  // (n_tok, cols)
  int64_t offset = 0;
  DeviceBuffer<float> device;
  const float* ptr() const { return device.get() + offset; }
};

absl::StatusOr<Activations> MakeActivations(std::mt19937& rng, int64_t n_tok, int64_t cols,
                                            Layout layout) {
  Activations a;
  a.host = RandomFloats(rng, n_tok * cols, -1.0f, 1.0f);
  a.offset = layout == Layout::kMisaligned ? 1 : 0;
  std::vector<float> buf(a.offset, 0.0f);
  buf.insert(buf.end(), a.host.begin(), a.host.end());
  ASSIGN_OR_RETURN(a.device, ToDevice(buf));
  return a;
}

// y (n_tok, rows) = x * W^T in double.
std::vector<double> Reference(const Weights& w, const std::vector<float>& x, int64_t n_tok) {
  std::vector<double> y(n_tok * w.rows);
  for (int64_t t = 0; t < n_tok; ++t) {
    const float* xt = x.data() + t * w.cols;
    for (int64_t r = 0; r < w.rows; ++r) {
      const double* wr = w.values.data() + r * w.cols;
      double s = 0;
      for (int64_t c = 0; c < w.cols; ++c) s += wr[c] * xt[c];
      y[t * w.rows + r] = s;
    }
  }
  return y;
}

double RelL2(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0;
  double den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    num += d * d;
    den += want[i] * want[i];
  }
  if (!std::isfinite(num)) return INFINITY;
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

constexpr GemmTile kEveryTile[] = {GemmTile::kAuto, GemmTile::k128x128, GemmTile::k64x128,
                                   GemmTile::k64x64};

// Runs one problem with every tile, expecting each within tolerance; returns
// the worst relative L2 error (huge on a failure to run).
double RunCase(std::mt19937& rng, int64_t rows, int64_t cols, Layout layout, int64_t n_tok) {
  auto w = MakeWeights(rng, rows, cols, layout);
  auto x = MakeActivations(rng, n_tok, cols, layout);
  auto y = PoisonedFloats(n_tok * rows);
  if (!w.ok() || !x.ok() || !y.ok()) {
    ADD_FAILURE() << "device setup failed";
    return 1e30;
  }
  const std::vector<double> want = Reference(*w, x->host, n_tok);
  double worst = 0;
  for (GemmTile tile : kEveryTile) {
    SCOPED_TRACE(::testing::Message() << "tile " << Name(tile));
    if (absl::Status st = y->FillBytes(0xff); !st.ok()) {
      ADD_FAILURE() << st;
      return 1e30;
    }
    const absl::Status launched =
        LaunchGemmF16Tiled(w->ptr(), rows, cols, w->ld, x->ptr(), n_tok, y->get(), tile, nullptr);
    if (!launched.ok()) {
      ADD_FAILURE() << launched;
      return 1e30;
    }
    auto got = ToHost(*y);
    if (!got.ok()) {
      ADD_FAILURE() << got.status();
      return 1e30;
    }
    const double err = RelL2(*got, want);
    EXPECT_LE(err, kTolerance);
    worst = std::max(worst, err);
  }
  return worst;
}

struct Shape {
  int64_t rows;
  int64_t cols;
};

TEST(GemmF16, OddShapesEveryTile) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  double worst = 0;
  int cases = 0;
  const Shape shapes[] = {{1, 8}, {7, 9}, {33, 100}, {130, 259}, {1, 1}, {64, 16}, {129, 33}};
  for (const Shape& sh : shapes) {
    for (Layout layout : {Layout::kPacked, Layout::kPadded, Layout::kMisaligned}) {
      for (int64_t n_tok : {1, 3, 65, 129}) {
        SCOPED_TRACE(::testing::Message() << "rows " << sh.rows << " cols " << sh.cols << " "
                                          << Name(layout) << " n_tok " << n_tok);
        worst = std::max(worst, RunCase(rng, sh.rows, sh.cols, layout, n_tok));
        cases += 4;
      }
    }
  }
  std::printf("GemmF16 odd shapes: worst relative L2 %.3g over %d runs (tolerance %.0e)\n", worst,
              cases, kTolerance);
}

TEST(GemmF16, PrefillSizedShapes) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  double worst = 0;
  int cases = 0;
  struct Case {
    int64_t rows, cols, n_tok;
    Layout layout;
  };
  const Case all[] = {{520, 4096, 513, Layout::kPadded},
                      {257, 4096 + 8 + 3, 200, Layout::kPacked},
                      {96, 11008, 130, Layout::kPadded},
                      {300, 1000, 513, Layout::kMisaligned}};
  for (const Case& c : all) {
    SCOPED_TRACE(::testing::Message() << "rows " << c.rows << " cols " << c.cols << " "
                                      << Name(c.layout) << " n_tok " << c.n_tok);
    worst = std::max(worst, RunCase(rng, c.rows, c.cols, c.layout, c.n_tok));
    cases += 4;
  }
  std::printf("GemmF16 prefill-sized: worst relative L2 %.3g over %d runs (tolerance %.0e)\n",
              worst, cases, kTolerance);
}

// Runs `launch` on a batch made of the given rows of `x_all` (n_tok, cols)
// and returns y (batch, rows).
template <typename Launch>
std::vector<float> RunBatch(const Weights& w, const std::vector<float>& x_all,
                            const std::vector<int>& pick, Layout layout, Launch launch) {
  std::vector<float> xb(pick.size() * w.cols);
  for (size_t i = 0; i < pick.size(); ++i) {
    std::copy_n(x_all.begin() + pick[i] * w.cols, w.cols, xb.begin() + i * w.cols);
  }
  const int64_t offset = layout == Layout::kMisaligned ? 1 : 0;
  std::vector<float> buf(offset, 0.0f);
  buf.insert(buf.end(), xb.begin(), xb.end());
  auto d_x = ToDevice(buf);
  auto d_y = PoisonedFloats(pick.size() * w.rows);
  if (!d_x.ok() || !d_y.ok()) {
    ADD_FAILURE() << "device setup failed";
    return {};
  }
  const absl::Status st =
      launch(d_x->get() + offset, static_cast<int64_t>(pick.size()), d_y->get());
  if (!st.ok()) {
    ADD_FAILURE() << st;
    return {};
  }
  auto got = ToHost(*d_y);
  if (!got.ok()) {
    ADD_FAILURE() << got.status();
    return {};
  }
  return *got;
}

// Every token's row, alone (n_tok 1) and in shuffled batches of each size in
// `batches`, must be bit-identical; the lone rows must match the reference.
template <typename Launch>
void CheckBatchInvariance(std::mt19937& rng, const Weights& w, Layout layout, int n_pool,
                          const std::vector<int>& batches, Launch launch) {
  const std::vector<float> x_all = RandomFloats(rng, n_pool * w.cols, -1.0f, 1.0f);
  std::vector<float> alone(n_pool * w.rows);
  for (int t = 0; t < n_pool; ++t) {
    const std::vector<float> y = RunBatch(w, x_all, {t}, layout, launch);
    if (y.empty()) return;
    std::copy(y.begin(), y.end(), alone.begin() + t * w.rows);
  }
  const double err = RelL2(alone, Reference(w, x_all, n_pool));
  EXPECT_LE(err, kTolerance);

  std::vector<int> order(n_pool);
  std::iota(order.begin(), order.end(), 0);
  int mismatched_rows = 0;
  for (int n : batches) {
    for (int trial = 0; trial < 2; ++trial) {
      std::shuffle(order.begin(), order.end(), rng);
      std::vector<int> pick;
      for (int i = 0; i < n; ++i) pick.push_back(order[i % n_pool]);
      const std::vector<float> y = RunBatch(w, x_all, pick, layout, launch);
      if (y.empty()) return;
      for (int i = 0; i < n; ++i) {
        if (std::memcmp(y.data() + i * w.rows, alone.data() + pick[i] * w.rows,
                        sizeof(float) * w.rows) != 0) {
          ADD_FAILURE() << "token " << pick[i] << " at position " << i << " of a batch of " << n
                        << " differs from the token alone";
          if (++mismatched_rows > 5) return;
        }
      }
    }
  }
}

TEST(MatMulF16, DecodeBatchInvariance) {
  M40_REQUIRE_CUDA_DEVICE();
  static_assert(kMatMulSkinnyMaxTokens >= 64, "decode batches up to 64 must be invariant");
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  // 4099 rows: batches of 64 take the 8-row-per-warp skinny variant on any
  // GPU with fewer than ~258 SMs, 17 tokens the 4-row one on an H100.
  const Shape shapes[] = {{4099, 4096 + 8 + 3}, {300, 1000}, {33, 9}};
  for (const Shape& sh : shapes) {
    for (Layout layout : {Layout::kPadded, Layout::kMisaligned}) {
      SCOPED_TRACE(::testing::Message()
                   << "rows " << sh.rows << " cols " << sh.cols << " " << Name(layout));
      auto w = MakeWeights(rng, sh.rows, sh.cols, layout);
      ASSERT_TRUE(w.ok()) << w.status();
      CheckBatchInvariance(
          rng, *w, layout, 64, {2, 5, 17, 64}, [&](const float* x, int64_t n_tok, float* y) {
            return LaunchMatMulF16(w->ptr(), w->rows, w->cols, w->ld, x, n_tok, y, nullptr);
          });
    }
  }
}

TEST(GemmF16, TokenRowsIndependentOfBatchAndTile) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  for (Layout layout : {Layout::kPadded, Layout::kMisaligned}) {
    SCOPED_TRACE(Name(layout));
    auto w = MakeWeights(rng, 200, 1000, layout);
    ASSERT_TRUE(w.ok()) << w.status();
    int call = 0;
    // Alternate the tile from call to call: the rows must not care.
    CheckBatchInvariance(rng, *w, layout, 24, {65, 130},
                         [&](const float* x, int64_t n_tok, float* y) {
                           return LaunchGemmF16Tiled(w->ptr(), w->rows, w->cols, w->ld, x, n_tok, y,
                                                     kEveryTile[call++ % 4], nullptr);
                         });
  }
}

TEST(MatMulF16, BothSidesOfTheThreshold) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  auto w = MakeWeights(rng, 333, 777, Layout::kPadded);
  ASSERT_TRUE(w.ok()) << w.status();
  for (int64_t n_tok :
       {int64_t{1}, kMatMulSkinnyMaxTokens, kMatMulSkinnyMaxTokens + 1, int64_t{513}}) {
    SCOPED_TRACE(::testing::Message() << "n_tok " << n_tok);
    M40_ASSERT_OK_AND_ASSIGN(auto x, MakeActivations(rng, n_tok, w->cols, Layout::kPadded));
    M40_ASSERT_OK_AND_ASSIGN(auto y, PoisonedFloats(n_tok * w->rows));
    M40_ASSERT_OK(
        LaunchMatMulF16(w->ptr(), w->rows, w->cols, w->ld, x.ptr(), n_tok, y.get(), nullptr));
    M40_ASSERT_OK_AND_ASSIGN(auto got, ToHost(y));
    EXPECT_LE(RelL2(got, Reference(*w, x.host, n_tok)), kTolerance);
  }
}

TEST(GemmF16, ZeroColumnsGiveZeros) {
  M40_REQUIRE_CUDA_DEVICE();
  M40_ASSERT_OK_AND_ASSIGN(auto d_y, PoisonedFloats(70 * 5));
  M40_ASSERT_OK_AND_ASSIGN(auto d_w, PoisonedFloats(1));
  M40_ASSERT_OK_AND_ASSIGN(auto d_x, PoisonedFloats(1));
  M40_ASSERT_OK(LaunchGemmF16(reinterpret_cast<const uint16_t*>(d_w.get()), 5, 0, 0, d_x.get(), 70,
                              d_y.get(), nullptr));
  M40_ASSERT_OK_AND_ASSIGN(auto got, ToHost(d_y));
  for (float v : got) EXPECT_EQ(v, 0.0f);
}

TEST(GemmF16, RejectsBadArguments) {
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  float* const fake_y = reinterpret_cast<float*>(uintptr_t{256});
  const float* const fake_x = fake_y;
  const uint16_t* const fake_w = reinterpret_cast<const uint16_t*>(fake_y);
  EXPECT_EQ(LaunchGemmF16(nullptr, 4, 8, 8, nullptr, 100, nullptr, nullptr).code(), kInvalid);
  EXPECT_EQ(LaunchGemmF16(fake_w, 4, 8, 7, fake_x, 100, fake_y, nullptr).code(), kInvalid);
  EXPECT_EQ(LaunchGemmF16(fake_w, -1, 8, 8, fake_x, 100, fake_y, nullptr).code(), kInvalid);
  EXPECT_EQ(LaunchGemmF16(fake_w, 4, -8, 8, fake_x, 100, fake_y, nullptr).code(), kInvalid);
  EXPECT_EQ(LaunchGemmF16(fake_w, 4, 8, 8, fake_x, -1, fake_y, nullptr).code(), kInvalid);
  EXPECT_EQ(
      LaunchGemmF16Tiled(fake_w, 4, 8, 8, fake_x, 100, fake_y, static_cast<GemmTile>(9), nullptr)
          .code(),
      kInvalid);
  EXPECT_EQ(LaunchMatMulF16(nullptr, 4, 8, 8, nullptr, 100, nullptr, nullptr).code(), kInvalid);
  EXPECT_EQ(LaunchMatMulF16(nullptr, 4, 8, 8, nullptr, 1, nullptr, nullptr).code(), kInvalid);
  EXPECT_EQ(LaunchMatMulF16(fake_w, 4, 8, 7, fake_x, 1, fake_y, nullptr).code(), kInvalid);
  // Nothing to do: no launch, no pointer needed.
  EXPECT_TRUE(LaunchGemmF16(nullptr, 4, 8, 8, nullptr, 0, nullptr, nullptr).ok());
  EXPECT_TRUE(LaunchGemmF16(nullptr, 0, 8, 8, nullptr, 100, nullptr, nullptr).ok());
  EXPECT_TRUE(LaunchMatMulF16(nullptr, 4, 8, 8, nullptr, 0, nullptr, nullptr).ok());
}

}  // namespace
}  // namespace m40llm::gpu
