// Reference quantisers producing ggml block layouts (see dequant.cc for the
// layouts themselves). Every scale is rounded to its stored FP16 value before
// the quants are chosen, so the decoder sees exactly the grid we quantised to.
#include "engine/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "absl/strings/str_format.h"
#include "engine/fp16.h"
#include "engine/status.h"

namespace m40llm {
namespace {

constexpr size_t kQK = 32;
constexpr size_t kQK_K = 256;

// Writes `v` as little-endian binary16 at `p`; returns the value stored.
float StoreHalf(uint8_t* p, float v) {
  const uint16_t h = FloatToHalf(v);
  p[0] = static_cast<uint8_t>(h & 0xff);
  p[1] = static_cast<uint8_t>(h >> 8);
  return HalfToFloat(h);
}

// round(v) clamped to [lo, hi]; NaN goes to lo.
int RoundClamp(float v, int lo, int hi) {
  if (!(v >= static_cast<float>(lo))) return lo;
  if (v >= static_cast<float>(hi)) return hi;
  return static_cast<int>(std::lround(v));
}

// Quant index of `x` on the grid `offset + q * step`, q in [lo, hi].
int Nearest(float x, float offset, float step, int lo, int hi) {
  if (step == 0.0f) return RoundClamp(0.0f, lo, hi);
  return RoundClamp((x - offset) / step, lo, hi);
}

// The element of largest magnitude, with its sign (0 for an empty range).
float SignedAbsMax(const float* x, size_t n) {
  float best = 0.0f;
  for (size_t i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > std::fabs(best)) best = x[i];
  }
  return best;
}

// Range of `x` widened to include zero, as the K-quant "scale * q - min"
// formats need a non-negative min.
void RangeWithZero(const float* x, size_t n, float* lo, float* hi) {
  *lo = 0.0f;
  *hi = 0.0f;
  for (size_t i = 0; i < n; ++i) {
    *lo = std::min(*lo, x[i]);
    *hi = std::max(*hi, x[i]);
  }
}

// Q4_0 (bits = 4) and Q5_0 (bits = 5): symmetric, y = (q - 2^(bits-1)) * d.
// The largest-magnitude value maps exactly onto the most negative quant.
void BlockSymmetric(const float* x, uint8_t* b, int bits) {
  const int half = 1 << (bits - 1);
  const float d =
      StoreHalf(b, SignedAbsMax(x, kQK) / static_cast<float>(-half));
  uint8_t* qh = b + 2;  // Q5_0 only
  uint8_t* qs = b + (bits == 5 ? 6 : 2);
  uint32_t high = 0;
  for (size_t j = 0; j < kQK / 2; ++j) {
    const int q0 = Nearest(x[j], 0.0f, d, -half, half - 1) + half;
    const int q1 = Nearest(x[j + kQK / 2], 0.0f, d, -half, half - 1) + half;
    qs[j] = static_cast<uint8_t>((q0 & 0x0f) | ((q1 & 0x0f) << 4));
    high |= static_cast<uint32_t>(q0 >> 4) << j;
    high |= static_cast<uint32_t>(q1 >> 4) << (j + 16);
  }
  if (bits == 5) std::memcpy(qh, &high, sizeof(high));
}

// Q4_1 (bits = 4) and Q5_1 (bits = 5): y = q * d + m over the block range.
void BlockAffine(const float* x, uint8_t* b, int bits) {
  const int top = (1 << bits) - 1;
  float lo = x[0], hi = x[0];
  for (size_t j = 1; j < kQK; ++j) {
    lo = std::min(lo, x[j]);
    hi = std::max(hi, x[j]);
  }
  const float d = StoreHalf(b, (hi - lo) / static_cast<float>(top));
  const float m = StoreHalf(b + 2, lo);
  uint8_t* qs = b + (bits == 5 ? 8 : 4);
  uint32_t high = 0;
  for (size_t j = 0; j < kQK / 2; ++j) {
    const int q0 = Nearest(x[j], m, d, 0, top);
    const int q1 = Nearest(x[j + kQK / 2], m, d, 0, top);
    qs[j] = static_cast<uint8_t>((q0 & 0x0f) | ((q1 & 0x0f) << 4));
    high |= static_cast<uint32_t>(q0 >> 4) << j;
    high |= static_cast<uint32_t>(q1 >> 4) << (j + 16);
  }
  if (bits == 5) std::memcpy(b + 4, &high, sizeof(high));
}

// Q8_0: y = q * d, q in [-127, 127].
void BlockQ8_0(const float* x, uint8_t* b) {
  float amax = 0.0f;
  for (size_t j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = StoreHalf(b, amax / 127.0f);
  for (size_t j = 0; j < kQK; ++j) {
    const int8_t q = static_cast<int8_t>(Nearest(x[j], 0.0f, d, -127, 127));
    std::memcpy(b + 2 + j, &q, 1);
  }
}

// Per-group affine parameters for the "(d * sc) * q - (dmin * m)" K-quants:
// `scale_bits`-bit sc and m, `q_max` the top quant. Fills sc/m per group and
// the per-value quants, and stores d and dmin at `d_at` / `dmin_at`.
void AffineGroups(const float* x, size_t groups, size_t group_size,
                  int scale_bits, int q_max, uint8_t* d_at, uint8_t* dmin_at,
                  int* sc, int* m, int* q) {
  const int s_max = (1 << scale_bits) - 1;
  float scale[16], offset[16];
  float scale_max = 0.0f, offset_max = 0.0f;
  for (size_t g = 0; g < groups; ++g) {
    float lo, hi;
    RangeWithZero(x + g * group_size, group_size, &lo, &hi);
    scale[g] = (hi - lo) / static_cast<float>(q_max);
    offset[g] = -lo;
    scale_max = std::max(scale_max, scale[g]);
    offset_max = std::max(offset_max, offset[g]);
  }
  const float d = StoreHalf(d_at, scale_max / static_cast<float>(s_max));
  const float dmin = StoreHalf(dmin_at, offset_max / static_cast<float>(s_max));
  for (size_t g = 0; g < groups; ++g) {
    sc[g] = Nearest(scale[g], 0.0f, d, 0, s_max);
    // Round the min up so that the group's smallest value stays reachable.
    m[g] = dmin == 0.0f
               ? 0
               : std::min(s_max, static_cast<int>(std::ceil(offset[g] / dmin)));
    const float step = d * static_cast<float>(sc[g]);
    const float off = dmin * static_cast<float>(m[g]);
    for (size_t l = 0; l < group_size; ++l) {
      const size_t i = g * group_size + l;
      q[i] = Nearest(x[i], -off, step, 0, q_max);
    }
  }
}

// Per-group signed scales for Q3_K / Q6_K ("d * sc * q"): sc in
// [sc_lo, sc_hi], q in [-q_half, q_half - 1]. Stores d at `d_at`.
void SymmetricGroups(const float* x, int q_half, int sc_lo, int sc_hi,
                     uint8_t* d_at, int* sc, int* q) {
  constexpr size_t kGroups = 16, kGroupSize = 16;
  float scale[kGroups];
  float scale_amax = 0.0f;
  for (size_t g = 0; g < kGroups; ++g) {
    scale[g] = SignedAbsMax(x + g * kGroupSize, kGroupSize) /
               static_cast<float>(-q_half);
    scale_amax = std::max(scale_amax, std::fabs(scale[g]));
  }
  const float d = StoreHalf(d_at, scale_amax / static_cast<float>(sc_hi));
  for (size_t g = 0; g < kGroups; ++g) {
    sc[g] = Nearest(scale[g], 0.0f, d, sc_lo, sc_hi);
    const float step = d * static_cast<float>(sc[g]);
    for (size_t l = 0; l < kGroupSize; ++l) {
      const size_t i = g * kGroupSize + l;
      q[i] = Nearest(x[i], 0.0f, step, -q_half, q_half - 1);
    }
  }
}

// Q2_K: 16 groups of 16, 4-bit sc and m, 2-bit quants.
void BlockQ2_K(const float* x, uint8_t* b) {
  int sc[16], m[16], q[kQK_K];
  AffineGroups(x, 16, 16, 4, 3, b + 80, b + 82, sc, m, q);
  for (size_t g = 0; g < 16; ++g)
    b[g] = static_cast<uint8_t>(sc[g] | (m[g] << 4));
  uint8_t* qs = b + 16;
  std::memset(qs, 0, 64);
  // Value i = 128h + 32j + 16p + l lives in qs[32h + 16p + l], bits 2j..2j+1.
  for (size_t i = 0; i < kQK_K; ++i) {
    const size_t h = i / 128, j = (i / 32) % 4, pl = i % 32;
    qs[32 * h + pl] |= static_cast<uint8_t>(q[i] << (2 * j));
  }
}

// Q3_K: 16 groups of 16, 6-bit signed sc (stored + 32), 3-bit quants.
void BlockQ3_K(const float* x, uint8_t* b) {
  int sc[16], q[kQK_K];
  SymmetricGroups(x, 4, -32, 31, b + 108, sc, q);
  uint8_t* hmask = b;
  uint8_t* qs = b + 32;
  uint8_t* packed = b + 96;
  std::memset(b, 0, 108);
  for (size_t i = 0; i < kQK_K; ++i) {
    const int level = q[i] + 4;  // 0..7; bit 2 is the hmask bit
    const size_t h = i / 128, j = (i / 32) % 4, pl = i % 32;
    qs[32 * h + pl] |= static_cast<uint8_t>((level & 3) << (2 * j));
    if (level & 4) hmask[pl] |= static_cast<uint8_t>(1u << (i / 32));
  }
  for (size_t g = 0; g < 16; ++g) {
    const int s6 = sc[g] + 32;
    if (g < 8) {
      packed[g] |= static_cast<uint8_t>(s6 & 0x0f);
    } else {
      packed[g - 8] |= static_cast<uint8_t>((s6 & 0x0f) << 4);
    }
    packed[8 + g % 4] |= static_cast<uint8_t>((s6 >> 4) << (2 * (g / 4)));
  }
}

// Packs eight 6-bit (sc, m) pairs into the 12-byte Q4_K/Q5_K scales field.
void PackScaleMinK4(const int* sc, const int* m, uint8_t* s) {
  std::memset(s, 0, 12);
  for (size_t j = 0; j < 8; ++j) {
    if (j < 4) {
      s[j] |= static_cast<uint8_t>(sc[j]);
      s[j + 4] |= static_cast<uint8_t>(m[j]);
    } else {
      s[j + 4] = static_cast<uint8_t>((sc[j] & 0x0f) | ((m[j] & 0x0f) << 4));
      s[j - 4] |= static_cast<uint8_t>((sc[j] >> 4) << 6);
      s[j] |= static_cast<uint8_t>((m[j] >> 4) << 6);
    }
  }
}

// Q4_K: 8 groups of 32, 6-bit sc and m, 4-bit quants.
void BlockQ4_K(const float* x, uint8_t* b) {
  int sc[8], m[8], q[kQK_K];
  AffineGroups(x, 8, 32, 6, 15, b, b + 2, sc, m, q);
  PackScaleMinK4(sc, m, b + 4);
  uint8_t* qs = b + 16;
  for (size_t c = 0; c < 4; ++c) {
    for (size_t l = 0; l < 32; ++l) {
      qs[32 * c + l] =
          static_cast<uint8_t>(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
    }
  }
}

// Q5_K: as Q4_K with 5-bit quants; the fifth bits go to qh.
void BlockQ5_K(const float* x, uint8_t* b) {
  int sc[8], m[8], q[kQK_K];
  AffineGroups(x, 8, 32, 6, 31, b, b + 2, sc, m, q);
  PackScaleMinK4(sc, m, b + 4);
  uint8_t* qh = b + 16;
  uint8_t* qs = b + 48;
  std::memset(qh, 0, 32);
  for (size_t c = 0; c < 4; ++c) {
    for (size_t l = 0; l < 32; ++l) {
      const int lo = q[64 * c + l], hi = q[64 * c + 32 + l];
      qs[32 * c + l] = static_cast<uint8_t>((lo & 0x0f) | ((hi & 0x0f) << 4));
      qh[l] |= static_cast<uint8_t>(((lo >> 4) << (2 * c)) |
                                    ((hi >> 4) << (2 * c + 1)));
    }
  }
}

// Q6_K: 16 groups of 16, int8 sc, 6-bit quants (stored + 32).
void BlockQ6_K(const float* x, uint8_t* b) {
  int sc[16], q[kQK_K];
  SymmetricGroups(x, 32, -128, 127, b + 208, sc, q);
  uint8_t* ql = b;
  uint8_t* qh = b + 128;
  std::memset(b, 0, 192);
  for (size_t g = 0; g < 16; ++g) {
    const int8_t s = static_cast<int8_t>(sc[g]);
    std::memcpy(b + 192 + g, &s, 1);
  }
  // In half h, value 32k + l: nibble in ql[64h + l + 32(k & 1)] (low for
  // k < 2), top bits in qh[32h + l] at bit 2k.
  for (size_t i = 0; i < kQK_K; ++i) {
    const int level = q[i] + 32;
    const size_t h = i / 128, k = (i / 32) % 4, l = i % 32;
    const size_t nib = 64 * h + l + 32 * (k & 1);
    ql[nib] |= static_cast<uint8_t>((level & 0x0f) << (k < 2 ? 0 : 4));
    qh[32 * h + l] |= static_cast<uint8_t>((level >> 4) << (2 * k));
  }
}

using BlockFn = void (*)(const float*, uint8_t*);

void EncodeBlocks(BlockFn fn, const float* src, size_t n,
                  const GgmlTypeTraits& t, std::string* out) {
  uint8_t* dst = reinterpret_cast<uint8_t*>(out->data());
  for (size_t i = 0; i < n / t.block_elems; ++i) {
    fn(src + i * t.block_elems, dst + i * t.block_bytes);
  }
}

}  // namespace

absl::StatusOr<std::string> QuantizeFromF32(GgmlType type, const float* src,
                                            size_t n) {
  const auto traits = TypeTraits(static_cast<uint32_t>(type));
  if (!traits || !IsSupportedWeightType(type)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "quantisation to tensor type %s is not supported", TypeName(type)));
  }
  if (n % traits->block_elems != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%d values are not a whole number of %d-value %s blocks", n,
        traits->block_elems, TypeName(type)));
  }
  if (n != 0 && src == nullptr) {
    return absl::InvalidArgumentError("quantisation given a null buffer");
  }
  std::string out(n / traits->block_elems * traits->block_bytes, '\0');
  uint8_t* dst = reinterpret_cast<uint8_t*>(out.data());
  switch (type) {
    case GgmlType::kF32:
      if (n != 0) std::memcpy(dst, src, n * sizeof(float));
      break;
    case GgmlType::kF16:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t h = FloatToHalf(src[i]);
        dst[2 * i] = static_cast<uint8_t>(h & 0xff);
        dst[2 * i + 1] = static_cast<uint8_t>(h >> 8);
      }
      break;
    case GgmlType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t h = FloatToBf16(src[i]);
        dst[2 * i] = static_cast<uint8_t>(h & 0xff);
        dst[2 * i + 1] = static_cast<uint8_t>(h >> 8);
      }
      break;
    case GgmlType::kQ4_0:
      EncodeBlocks([](const float* x, uint8_t* b) { BlockSymmetric(x, b, 4); },
                   src, n, *traits, &out);
      break;
    case GgmlType::kQ5_0:
      EncodeBlocks([](const float* x, uint8_t* b) { BlockSymmetric(x, b, 5); },
                   src, n, *traits, &out);
      break;
    case GgmlType::kQ4_1:
      EncodeBlocks([](const float* x, uint8_t* b) { BlockAffine(x, b, 4); },
                   src, n, *traits, &out);
      break;
    case GgmlType::kQ5_1:
      EncodeBlocks([](const float* x, uint8_t* b) { BlockAffine(x, b, 5); },
                   src, n, *traits, &out);
      break;
    case GgmlType::kQ8_0:
      EncodeBlocks(BlockQ8_0, src, n, *traits, &out);
      break;
    case GgmlType::kQ2_K:
      EncodeBlocks(BlockQ2_K, src, n, *traits, &out);
      break;
    case GgmlType::kQ3_K:
      EncodeBlocks(BlockQ3_K, src, n, *traits, &out);
      break;
    case GgmlType::kQ4_K:
      EncodeBlocks(BlockQ4_K, src, n, *traits, &out);
      break;
    case GgmlType::kQ5_K:
      EncodeBlocks(BlockQ5_K, src, n, *traits, &out);
      break;
    case GgmlType::kQ6_K:
      EncodeBlocks(BlockQ6_K, src, n, *traits, &out);
      break;
    default:
      return absl::InternalError(absl::StrFormat(
          "quantisation to tensor type %s is not implemented", TypeName(type)));
  }
  return out;
}

}  // namespace m40llm
