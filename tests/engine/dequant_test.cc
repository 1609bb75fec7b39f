// Tests for engine/fp16.h, engine/dequant.h and engine/quantize.h: exhaustive
// half conversion checks, every block format decoded against an independent
// bit-level reading of its layout, and quantise -> dequantise round trips.
#include "engine/dequant.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/fp16.h"
#include "engine/ggml_types.h"
#include "engine/quantize.h"
#include "gtest/gtest.h"
#include "tests/support/test_support.h"

namespace m40llm {
namespace {

uint32_t Bits32(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float FromBits32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The value of a finite binary16 pattern straight from the IEEE definition,
// in double (exact): (-1)^s * 2^(e-15) * (1 + m/1024), or m * 2^-24 when e = 0.
double HalfValue(uint16_t h) {
  const int s = h >> 15;
  const int e = (h >> 10) & 31;
  const int m = h & 1023;
  const double mag = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
  return s ? -mag : mag;
}

// Reference float -> half by search: the finite half nearest to `v`, ties to
// the even pattern; infinity from 65520 (= 65504 + half an ulp) up.
uint16_t NearestHalfBySearch(float v) {
  const uint16_t sign = std::signbit(v) ? 0x8000 : 0;
  const double a = std::fabs(static_cast<double>(v));
  if (a >= 65520.0) return sign | 0x7c00;
  // Positive finite halves 0x0000..0x7bff increase with the pattern.
  uint32_t lo = 0, hi = 0x7bff;
  while (lo < hi) {  // largest pattern with value <= a
    const uint32_t mid = (lo + hi + 1) / 2;
    if (HalfValue(static_cast<uint16_t>(mid)) <= a) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  uint32_t best = lo;
  if (lo < 0x7bff) {
    const double below = a - HalfValue(static_cast<uint16_t>(lo));
    const double above = HalfValue(static_cast<uint16_t>(lo + 1)) - a;
    if (above < below || (above == below && (lo & 1))) best = lo + 1;
  } else if (a > 65504.0) {
    best = 0x7bff;  // (65504, 65520) rounds down to the largest finite half
  }
  return static_cast<uint16_t>(sign | best);
}

bool IsHalfNan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff); }

TEST(Fp16Test, HalfToFloatMatchesDefinitionForAllPatterns) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const uint16_t h = static_cast<uint16_t>(i);
    const float f = HalfToFloat(h);
    if ((h & 0x7c00) == 0x7c00) {
      if (h & 0x3ff) {
        ASSERT_TRUE(std::isnan(f)) << std::hex << h;
        // Sign and payload survive in the top float mantissa bits.
        ASSERT_EQ(Bits32(f) >> 31, h >> 15u) << std::hex << h;
        ASSERT_EQ((Bits32(f) >> 13) & 0x3ff, h & 0x3ffu) << std::hex << h;
      } else {
        ASSERT_TRUE(std::isinf(f)) << std::hex << h;
        ASSERT_EQ(std::signbit(f), (h >> 15) != 0);
      }
      continue;
    }
    const float expected = static_cast<float>(HalfValue(h));
    ASSERT_EQ(Bits32(f), Bits32(expected)) << std::hex << h;
  }
}

TEST(Fp16Test, RoundTripsEveryHalfPattern) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const uint16_t h = static_cast<uint16_t>(i);
    ASSERT_EQ(FloatToHalf(HalfToFloat(h)), h) << std::hex << h;
  }
}

TEST(Fp16Test, BatchedConversionsMatchScalar) {
  std::vector<uint16_t> all(65536 + 5);  // odd length exercises the tail
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint16_t>(i);
  std::vector<float> wide(all.size(), -1.0f);
  HalfToFloatN(all.data(), wide.data(), all.size());
  for (size_t i = 0; i < all.size(); ++i) {
    ASSERT_EQ(Bits32(wide[i]), Bits32(HalfToFloat(all[i]))) << i;
  }
  // Every float bit pattern with a stride, plus all halves widened.
  std::vector<float> floats(wide);
  for (uint64_t b = 0; b < (1ull << 32); b += 40503) {
    floats.push_back(FromBits32(static_cast<uint32_t>(b)));
  }
  std::vector<uint16_t> narrow(floats.size(), 0xdead);
  FloatToHalfN(floats.data(), narrow.data(), floats.size());
  for (size_t i = 0; i < floats.size(); ++i) {
    ASSERT_EQ(narrow[i], FloatToHalf(floats[i]))
        << std::hex << Bits32(floats[i]);
  }
}

TEST(Fp16Test, FloatToHalfMatchesNearestSearch) {
  // Random bit patterns concentrated on the half range, plus midpoints
  // between adjacent halves (the ties) and their float neighbours.
  std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<uint32_t> exp_dist(100, 145);  // 2^-27..2^18
  std::uniform_int_distribution<uint32_t> bits_dist;
  std::vector<float> probes;
  for (int i = 0; i < 200000; ++i) {
    const uint32_t b = (bits_dist(rng) & 0x807fffffu) | (exp_dist(rng) << 23);
    probes.push_back(FromBits32(b));
  }
  for (uint32_t h = 0; h < 0x7bff; h += 7) {
    const double mid = (HalfValue(static_cast<uint16_t>(h)) +
                        HalfValue(static_cast<uint16_t>(h + 1))) /
                       2;
    const float f = static_cast<float>(mid);
    ASSERT_EQ(static_cast<double>(f), mid);  // midpoints are floats
    probes.push_back(f);
    probes.push_back(-f);
    probes.push_back(std::nextafter(f, 0.0f));
    probes.push_back(std::nextafter(f, 1e9f));
  }
  for (float f : probes) {
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToHalf(f), NearestHalfBySearch(f))
        << std::hexfloat << f << " bits " << std::hex << Bits32(f);
  }
}

TEST(Fp16Test, FloatToHalfEdgeCases) {
  // Ties go to the even mantissa.
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // 1.0
  EXPECT_EQ(FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // up
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // tie 0 | 2^-24
  EXPECT_EQ(FloatToHalf(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(FloatToHalf(3 * std::ldexp(1.0f, -25)), 0x0002);  // 1.5 -> 2
  EXPECT_EQ(FloatToHalf(5 * std::ldexp(1.0f, -25)), 0x0002);  // 2.5 -> 2
  // Halfway between the largest subnormal and the smallest normal.
  EXPECT_EQ(FloatToHalf(std::ldexp(2047.0f, -25)), 0x0400);
  EXPECT_EQ(FloatToHalf(-std::ldexp(1.0f, -30)), 0x8000);  // -0
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  // Overflow.
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65519.99f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);
  EXPECT_EQ(FloatToHalf(-1e30f), 0xfc00);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7c00);
  // NaN stays NaN, even when its payload sits below the kept bits.
  EXPECT_TRUE(IsHalfNan(FloatToHalf(std::nanf(""))));
  EXPECT_TRUE(IsHalfNan(FloatToHalf(FromBits32(0x7f800001u))));
  EXPECT_TRUE(IsHalfNan(FloatToHalf(FromBits32(0xff800001u))));
  EXPECT_EQ(FloatToHalf(FromBits32(0xff800001u)) & 0x8000, 0x8000);
}

TEST(Bf16Test, ConversionsBothWays) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const uint16_t b = static_cast<uint16_t>(i);
    ASSERT_EQ(Bits32(Bf16ToFloat(b)), i << 16);
    if (!std::isnan(Bf16ToFloat(b))) {
      ASSERT_EQ(FloatToBf16(Bf16ToFloat(b)), b);
    }
  }
  EXPECT_EQ(FloatToBf16(FromBits32(0x3f808000u)), 0x3f80);  // tie -> even
  EXPECT_EQ(FloatToBf16(FromBits32(0x3f818000u)), 0x3f82);  // tie -> even
  EXPECT_EQ(FloatToBf16(FromBits32(0x3f808001u)), 0x3f81);
  EXPECT_EQ(FloatToBf16(FromBits32(0x7f7fffffu)), 0x7f80);  // overflow
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(FromBits32(0x7f800001u)))));
}

// ---------------------------------------------------------------------------
// Block formats, read bit by bit from the layout tables.

// `count` bits (LSB first) starting at absolute bit `pos` of `p`.
uint32_t Bits(const uint8_t* p, size_t pos, size_t count) {
  uint32_t v = 0;
  for (size_t k = 0; k < count; ++k) {
    const size_t at = pos + k;
    v |= static_cast<uint32_t>((p[at / 8] >> (at % 8)) & 1) << k;
  }
  return v;
}

double HalfAt(const uint8_t* b, size_t byte) {
  return HalfValue(static_cast<uint16_t>(Bits(b, 8 * byte, 16)));
}

// The 6-bit scale / min number j of the 12-byte Q4_K / Q5_K field `s`.
void K4Pair(const uint8_t* s, size_t j, double* sc, double* m) {
  if (j < 4) {
    *sc = Bits(s, 8 * j, 6);
    *m = Bits(s, 8 * (j + 4), 6);
  } else {
    *sc = Bits(s, 8 * (j + 4), 4) + 16 * Bits(s, 8 * (j - 4) + 6, 2);
    *m = Bits(s, 8 * (j + 4) + 4, 4) + 16 * Bits(s, 8 * j + 6, 2);
  }
}

// Value `i` of one block, computed exactly in double. Each format's float32
// decode rounds exactly once (its products are exact), so the float of this
// is the bit-exact expected result.
double ExpectedValue(GgmlType t, const uint8_t* b, size_t i) {
  // K-quant position helpers: half h of 128 values, 32-value lane k, offset r.
  const size_t h = i / 128, k = (i % 128) / 32, r = i % 32;
  switch (t) {
    case GgmlType::kQ4_0: {
      const double q = Bits(b, 8 * (2 + i % 16) + 4 * (i / 16), 4);
      return (q - 8) * HalfAt(b, 0);
    }
    case GgmlType::kQ4_1: {
      const double q = Bits(b, 8 * (4 + i % 16) + 4 * (i / 16), 4);
      return q * HalfAt(b, 0) + HalfAt(b, 2);
    }
    case GgmlType::kQ5_0: {
      const double q = Bits(b, 8 * (6 + i % 16) + 4 * (i / 16), 4) +
                       16.0 * Bits(b, 16 + i, 1);
      return (q - 16) * HalfAt(b, 0);
    }
    case GgmlType::kQ5_1: {
      const double q = Bits(b, 8 * (8 + i % 16) + 4 * (i / 16), 4) +
                       16.0 * Bits(b, 32 + i, 1);
      return q * HalfAt(b, 0) + HalfAt(b, 2);
    }
    case GgmlType::kQ8_0: {
      const int raw = static_cast<int>(Bits(b, 8 * (2 + i), 8));
      return (raw >= 128 ? raw - 256 : raw) * HalfAt(b, 0);
    }
    case GgmlType::kQ2_K: {
      const size_t g = i / 16;
      const double q = Bits(b, 8 * (16 + 32 * h + r) + 2 * k, 2);
      const double sc = Bits(b, 8 * g, 4), mn = Bits(b, 8 * g + 4, 4);
      return HalfAt(b, 80) * sc * q - HalfAt(b, 82) * mn;
    }
    case GgmlType::kQ3_K: {
      const size_t g = i / 16;
      const double q = Bits(b, 8 * (32 + 32 * h + r) + 2 * k, 2) +
                       4.0 * Bits(b, 8 * r + i / 32, 1) - 4;
      const double sc = Bits(b, 8 * (96 + g % 8) + 4 * (g / 8), 4) +
                        16.0 * Bits(b, 8 * (104 + g % 4) + 2 * (g / 4), 2) - 32;
      return HalfAt(b, 108) * sc * q;
    }
    case GgmlType::kQ4_K: {
      const size_t g = i / 32;
      const double q = Bits(b, 8 * (16 + 32 * (i / 64) + r) + 4 * (g % 2), 4);
      double sc, mn;
      K4Pair(b + 4, g, &sc, &mn);
      return HalfAt(b, 0) * sc * q - HalfAt(b, 2) * mn;
    }
    case GgmlType::kQ5_K: {
      const size_t g = i / 32;
      const double q = Bits(b, 8 * (48 + 32 * (i / 64) + r) + 4 * (g % 2), 4) +
                       16.0 * Bits(b, 8 * (16 + r) + g, 1);
      double sc, mn;
      K4Pair(b + 4, g, &sc, &mn);
      return HalfAt(b, 0) * sc * q - HalfAt(b, 2) * mn;
    }
    case GgmlType::kQ6_K: {
      const double q =
          Bits(b, 8 * (64 * h + r + 32 * (k % 2)) + 4 * (k / 2), 4) +
          16.0 * Bits(b, 8 * (128 + 32 * h + r) + 2 * k, 2) - 32;
      const int raw = static_cast<int>(Bits(b, 8 * (192 + i / 16), 8));
      const double sc = raw >= 128 ? raw - 256 : raw;
      return HalfAt(b, 208) * sc * q;
    }
    default:
      ADD_FAILURE() << "no expectation for " << TypeName(t);
      return 0;
  }
}

// Byte offsets of each format's binary16 fields.
std::vector<size_t> HalfFields(GgmlType t) {
  switch (t) {
    case GgmlType::kQ4_0:
    case GgmlType::kQ5_0:
    case GgmlType::kQ8_0:
      return {0};
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_1:
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
      return {0, 2};
    case GgmlType::kQ2_K:
      return {80, 82};
    case GgmlType::kQ3_K:
      return {108};
    case GgmlType::kQ6_K:
      return {208};
    default:
      return {};
  }
}

constexpr GgmlType kQuantTypes[] = {
    GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1,
    GgmlType::kQ8_0, GgmlType::kQ2_K, GgmlType::kQ3_K, GgmlType::kQ4_K,
    GgmlType::kQ5_K, GgmlType::kQ6_K};

class BlockDecodeTest : public ::testing::TestWithParam<GgmlType> {};

TEST_P(BlockDecodeTest, MatchesBitLevelReading) {
  const GgmlType t = GetParam();
  const auto traits = *TypeTraits(static_cast<uint32_t>(t));
  // Blocks of fixed pseudo-random bytes (every quant and scale bit takes both
  // values somewhere) whose half fields are set to chosen scales: ordinary,
  // negative, subnormal, small and large.
  const uint16_t kScales[][2] = {{0x3c00, 0x3800},
                                 {0xb800, 0x2e66},
                                 {0x0003, 0x83ff},
                                 {0x1a3f, 0x0000},
                                 {0x5a00, 0xc900}};
  constexpr size_t kBlocks = sizeof(kScales) / sizeof(kScales[0]);
  std::vector<uint8_t> data(kBlocks * traits.block_bytes);
  std::mt19937 rng(1234 + static_cast<uint32_t>(t));
  for (auto& byte : data) byte = static_cast<uint8_t>(rng());
  for (size_t blk = 0; blk < kBlocks; ++blk) {
    const std::vector<size_t> fields = HalfFields(t);
    for (size_t f = 0; f < fields.size(); ++f) {
      uint8_t* p = &data[blk * traits.block_bytes + fields[f]];
      p[0] = static_cast<uint8_t>(kScales[blk][f] & 0xff);
      p[1] = static_cast<uint8_t>(kScales[blk][f] >> 8);
    }
  }
  const size_t n = kBlocks * traits.block_elems;
  std::vector<float> got(n, std::nanf(""));
  ASSERT_TRUE(DequantizeToF32(t, data.data(), n, got.data()).ok());
  for (size_t blk = 0; blk < kBlocks; ++blk) {
    const uint8_t* b = &data[blk * traits.block_bytes];
    for (size_t i = 0; i < traits.block_elems; ++i) {
      const float want = static_cast<float>(ExpectedValue(t, b, i));
      const float have = got[blk * traits.block_elems + i];
      ASSERT_EQ(Bits32(have), Bits32(want))
          << TypeName(t) << " block " << blk << " value " << i << ": got "
          << have << " want " << want;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllQuantTypes, BlockDecodeTest,
                         ::testing::ValuesIn(kQuantTypes),
                         [](const auto& info) { return TypeName(info.param); });

TEST(DequantTest, FloatTypesDecodeExactly) {
  const float values[] = {1.0f, -2.5f, 0.0f, -0.0f, 3.0e-5f, 65504.0f};
  constexpr size_t n = sizeof(values) / sizeof(values[0]);
  std::string f32(reinterpret_cast<const char*>(values), sizeof(values));
  std::vector<float> out(n);
  ASSERT_TRUE(DequantizeToF32(GgmlType::kF32,
                              reinterpret_cast<const uint8_t*>(f32.data()), n,
                              out.data())
                  .ok());
  EXPECT_EQ(std::memcmp(out.data(), values, sizeof(values)), 0);

  // F16 / BF16 bytes, little-endian, from an unaligned address.
  std::vector<uint8_t> f16(2 * n + 1), bf16(2 * n + 1);
  for (size_t i = 0; i < n; ++i) {
    const uint16_t h = FloatToHalf(values[i]);
    f16[1 + 2 * i] = static_cast<uint8_t>(h & 0xff);
    f16[2 + 2 * i] = static_cast<uint8_t>(h >> 8);
    const uint16_t bh = static_cast<uint16_t>(Bits32(values[i]) >> 16);
    bf16[1 + 2 * i] = static_cast<uint8_t>(bh & 0xff);
    bf16[2 + 2 * i] = static_cast<uint8_t>(bh >> 8);
  }
  ASSERT_TRUE(
      DequantizeToF32(GgmlType::kF16, f16.data() + 1, n, out.data()).ok());
  for (size_t i = 0; i < n; ++i) {
    EXPECT_EQ(Bits32(out[i]),
              Bits32(static_cast<float>(HalfValue(FloatToHalf(values[i])))));
  }
  ASSERT_TRUE(
      DequantizeToF32(GgmlType::kBF16, bf16.data() + 1, n, out.data()).ok());
  for (size_t i = 0; i < n; ++i) {
    EXPECT_EQ(Bits32(out[i]), Bits32(values[i]) & 0xffff0000u);
  }
}

TEST(DequantTest, ToF16ClampsOutOfRangeAndCounts) {
  const float in[] = {
      1e6f,          -1e6f,    std::numeric_limits<float>::infinity(),
      std::nanf(""), 65504.0f, 65519.0f,
      1.0f,          -70000.0f};
  constexpr size_t n = sizeof(in) / sizeof(in[0]);
  std::vector<uint16_t> out(n, 0);
  uint64_t clamped = 10;  // incremented, not reset
  ASSERT_TRUE(DequantizeToF16(GgmlType::kF32,
                              reinterpret_cast<const uint8_t*>(in), n,
                              out.data(), &clamped)
                  .ok());
  EXPECT_EQ(clamped, 15u);
  EXPECT_EQ(out[0], 0x7bff);
  EXPECT_EQ(out[1], 0xfbff);
  EXPECT_EQ(out[2], 0x7bff);
  EXPECT_TRUE(IsHalfNan(out[3]));
  EXPECT_EQ(out[4], 0x7bff);
  EXPECT_EQ(out[5], 0x7bff);  // above 65504, so clamped and counted
  EXPECT_EQ(out[6], 0x3c00);
  EXPECT_EQ(out[7], 0xfbff);

  // BF16 input: 2^17 and a NaN.
  const uint8_t bf16[] = {0x00, 0x48, 0xc0, 0x7f, 0x80, 0x3f};
  std::vector<uint16_t> out2(3, 0);
  ASSERT_TRUE(
      DequantizeToF16(GgmlType::kBF16, bf16, 3, out2.data(), nullptr).ok());
  EXPECT_EQ(out2[0], 0x7bff);
  EXPECT_TRUE(IsHalfNan(out2[1]));
  EXPECT_EQ(out2[2], 0x3c00);
}

TEST(DequantTest, ToF16IsRoundedToF32ForEveryType) {
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> gauss;
  std::vector<float> x(4 * 2048 + 512);  // spans several internal chunks
  for (auto& v : x) v = gauss(rng);
  for (GgmlType t : kQuantTypes) {
    auto q = QuantizeFromF32(t, x.data(), x.size());
    ASSERT_TRUE(q.ok()) << q.status();
    const auto* src = reinterpret_cast<const uint8_t*>(q->data());
    std::vector<float> f32(x.size());
    std::vector<uint16_t> f16(x.size(), 0xffff);
    ASSERT_TRUE(DequantizeToF32(t, src, x.size(), f32.data()).ok());
    uint64_t clamped = 0;
    ASSERT_TRUE(DequantizeToF16(t, src, x.size(), f16.data(), &clamped).ok());
    EXPECT_EQ(clamped, 0u);
    for (size_t i = 0; i < x.size(); ++i) {
      ASSERT_EQ(f16[i], FloatToHalf(f32[i])) << TypeName(t) << " at " << i;
    }
  }
}

// Relative L2 error bounds for quantise -> dequantise of 16384 N(0, 1)
// values with the simple scale rules in quantize.cc. Over 60 seeds the
// measured errors varied by under 5%; each bound is about 1.2x the largest
// seen, so a layout or scale bug (errors of order 1) or one lost bit of
// precision (about 2x the error) fails.
struct RoundTripCase {
  GgmlType type;
  double max_rel_l2;
};

constexpr RoundTripCase kRoundTrips[] = {
    {GgmlType::kF32, 0.0},     {GgmlType::kF16, 2.5e-4},
    {GgmlType::kBF16, 2.0e-3}, {GgmlType::kQ8_0, 0.0065},  // measured 0.0054
    {GgmlType::kQ4_0, 0.105},  {GgmlType::kQ4_1, 0.095},   // 0.087, 0.079
    {GgmlType::kQ5_0, 0.052},  {GgmlType::kQ5_1, 0.046},   // 0.043, 0.039
    {GgmlType::kQ2_K, 0.40},   {GgmlType::kQ3_K, 0.19},    // 0.334, 0.157
    {GgmlType::kQ4_K, 0.095},  {GgmlType::kQ5_K, 0.047},   // 0.080, 0.039
    {GgmlType::kQ6_K, 0.023},                              // 0.019
};

class RoundTripTest : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(RoundTripTest, RelativeL2WithinBound) {
  const RoundTripCase c = GetParam();
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  std::normal_distribution<float> gauss;
  std::vector<float> x(64 * 256);
  for (auto& v : x) v = gauss(rng);
  auto q = QuantizeFromF32(c.type, x.data(), x.size());
  ASSERT_TRUE(q.ok()) << q.status();
  const auto traits = *TypeTraits(static_cast<uint32_t>(c.type));
  ASSERT_EQ(q->size(), x.size() / traits.block_elems * traits.block_bytes);
  std::vector<float> y(x.size(), std::nanf(""));  // poisoned
  ASSERT_TRUE(DequantizeToF32(c.type,
                              reinterpret_cast<const uint8_t*>(q->data()),
                              x.size(), y.data())
                  .ok());
  const double err = testing::RelL2(y.data(), x.data(), x.size());
  std::printf("%-5s rel L2 %.5f (bound %.5f)\n", TypeName(c.type).c_str(), err,
              c.max_rel_l2);
  EXPECT_LE(err, c.max_rel_l2) << TypeName(c.type);
}

INSTANTIATE_TEST_SUITE_P(AllTypes, RoundTripTest,
                         ::testing::ValuesIn(kRoundTrips),
                         [](const auto& info) {
                           return TypeName(info.param.type);
                         });

TEST(DequantTest, RejectsUnsupportedTypesAndRaggedLengths) {
  std::vector<uint8_t> src(1024);
  std::vector<float> f32(256);
  std::vector<uint16_t> f16(256);
  for (GgmlType t : {GgmlType::kIQ2_XXS, GgmlType::kQ8_K, GgmlType::kQ8_1,
                     GgmlType::kI32, GgmlType::kMXFP4}) {
    const absl::Status s = DequantizeToF32(t, src.data(), 256, f32.data());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find(TypeName(t)), std::string::npos) << s;
    const absl::Status s16 =
        DequantizeToF16(t, src.data(), 256, f16.data(), nullptr);
    EXPECT_EQ(s16.code(), absl::StatusCode::kInvalidArgument) << s16;
    EXPECT_NE(s16.message().find(TypeName(t)), std::string::npos) << s16;
    const auto qs = QuantizeFromF32(t, f32.data(), 256);
    EXPECT_EQ(qs.status().code(), absl::StatusCode::kInvalidArgument);
  }
  const absl::Status unknown =
      DequantizeToF32(static_cast<GgmlType>(77), src.data(), 256, f32.data());
  EXPECT_EQ(unknown.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(unknown.message().find("type#77"), std::string::npos) << unknown;
  EXPECT_EQ(
      DequantizeToF32(GgmlType::kQ4_K, src.data(), 100, f32.data()).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DequantizeToF32(GgmlType::kQ8_0, src.data(), 33, f32.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(QuantizeFromF32(GgmlType::kQ4_0, f32.data(), 31).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(DequantizeToF32(GgmlType::kQ6_K, nullptr, 0, nullptr).ok());
}

}  // namespace
}  // namespace m40llm
