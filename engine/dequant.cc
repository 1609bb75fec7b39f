// Block decoders for the ggml weight formats, matching llama.cpp's reference
// dequantize_row_* results bit for bit.
//
// Exactness note: in every format below each product (scale * sub-scale,
// scale * quant) is exact in float32 (at most 11 + 8 + 6 significant bits),
// so the only rounding is the final add/subtract of the offset. That makes the
// result independent of FMA contraction; we still evaluate in ggml's order
// (for example `(d * sc) * q - (dmin * m)`) so the code reads like the format.
#include "engine/dequant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_format.h"
#include "engine/fp16.h"
#include "engine/status.h"

namespace m40llm {
namespace {

constexpr size_t kQK = 32;     // values per legacy block (Q4_0 .. Q8_0)
constexpr size_t kQK_K = 256;  // values per K-quant super-block

// Little-endian binary16 at `p`, widened.
inline float LoadHalf(const uint8_t* p) {
  return HalfToFloat(static_cast<uint16_t>(p[0] | (p[1] << 8)));
}

// Q4_0, 18 bytes: d (f16), qs[16]. Value j (< 16) is the low nibble of qs[j],
// value j + 16 its high nibble; y = (q - 8) * d.
void BlockQ4_0(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const uint8_t* qs = b + 2;
  for (size_t j = 0; j < kQK / 2; ++j) {
    const int q0 = (qs[j] & 0x0f) - 8;
    const int q1 = (qs[j] >> 4) - 8;
    y[j] = static_cast<float>(q0) * d;
    y[j + kQK / 2] = static_cast<float>(q1) * d;
  }
}

// Q4_1, 20 bytes: d (f16), m (f16), qs[16]; y = q * d + m.
void BlockQ4_1(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const float m = LoadHalf(b + 2);
  const uint8_t* qs = b + 4;
  for (size_t j = 0; j < kQK / 2; ++j) {
    const int q0 = qs[j] & 0x0f;
    const int q1 = qs[j] >> 4;
    y[j] = static_cast<float>(q0) * d + m;
    y[j + kQK / 2] = static_cast<float>(q1) * d + m;
  }
}

// Q5_0, 22 bytes: d (f16), qh (u32 LE: bit i is the fifth bit of value i),
// qs[16] as Q4_0; y = (q - 16) * d.
void BlockQ5_0(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, sizeof(qh));
  const uint8_t* qs = b + 6;
  for (size_t j = 0; j < kQK / 2; ++j) {
    const int hi0 = static_cast<int>((qh >> j) & 1u) << 4;
    const int hi1 = static_cast<int>((qh >> (j + 16)) & 1u) << 4;
    const int q0 = ((qs[j] & 0x0f) | hi0) - 16;
    const int q1 = ((qs[j] >> 4) | hi1) - 16;
    y[j] = static_cast<float>(q0) * d;
    y[j + kQK / 2] = static_cast<float>(q1) * d;
  }
}

// Q5_1, 24 bytes: d (f16), m (f16), qh (u32), qs[16]; y = q * d + m.
void BlockQ5_1(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const float m = LoadHalf(b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, sizeof(qh));
  const uint8_t* qs = b + 8;
  for (size_t j = 0; j < kQK / 2; ++j) {
    const int hi0 = static_cast<int>((qh >> j) & 1u) << 4;
    const int hi1 = static_cast<int>((qh >> (j + 16)) & 1u) << 4;
    const int q0 = (qs[j] & 0x0f) | hi0;
    const int q1 = (qs[j] >> 4) | hi1;
    y[j] = static_cast<float>(q0) * d + m;
    y[j + kQK / 2] = static_cast<float>(q1) * d + m;
  }
}

// Q8_0, 34 bytes: d (f16), qs[32] (int8); y = q * d.
void BlockQ8_0(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (size_t j = 0; j < kQK; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

// Q2_K, 84 bytes: scales[16], qs[64], d (f16), dmin (f16). Sixteen groups of
// 16 values; group g has scale (scales[g] & 15) * d and min
// (scales[g] >> 4) * dmin. The 2-bit quants: for half h (128 values) and
// shift s in {0,2,4,6}, group 8h + 2*(s/2) reads bits s..s+1 of
// qs[32h + 0..15], the next group of qs[32h + 16..31].
void BlockQ2_K(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* q = b + 16;
  const float d = LoadHalf(b + 80);
  const float dmin = LoadHalf(b + 82);
  size_t g = 0;
  for (size_t half = 0; half < 2; ++half, q += 32) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (size_t part = 0; part < 2; ++part, ++g) {
        const float dl = d * static_cast<float>(scales[g] & 0x0f);
        const float ml = dmin * static_cast<float>(scales[g] >> 4);
        const uint8_t* qp = q + 16 * part;
        for (size_t l = 0; l < 16; ++l) {
          *y++ = dl * static_cast<float>((qp[l] >> shift) & 3) - ml;
        }
      }
    }
  }
}

// Q3_K, 110 bytes: hmask[32], qs[64], scales[12], d (f16). Same value order
// as Q2_K; the third bit of value 32k + l (k < 8) is bit k of hmask[l], and a
// CLEAR bit subtracts 4. Group g's 6-bit scale: low nibble from
// scales[g % 8] (low nibble for g < 8, high for g >= 8), top two bits from
// scales[8 + g % 4] at bit 2 * (g / 4); y = d * (scale - 32) * q.
void BlockQ3_K(const uint8_t* b, float* y) {
  const uint8_t* hmask = b;
  const uint8_t* q = b + 32;
  const uint8_t* packed = b + 96;
  const float d = LoadHalf(b + 108);
  int scale[16];
  for (size_t g = 0; g < 16; ++g) {
    const int lo = (g < 8) ? (packed[g] & 0x0f) : (packed[g - 8] >> 4);
    const int hi = (packed[8 + g % 4] >> (2 * (g / 4))) & 3;
    scale[g] = (lo | (hi << 4)) - 32;
  }
  size_t g = 0;
  uint8_t bit = 1;
  for (size_t half = 0; half < 2; ++half, q += 32) {
    for (int shift = 0; shift < 8; shift += 2, bit <<= 1) {
      for (size_t part = 0; part < 2; ++part, ++g) {
        const float dl = d * static_cast<float>(scale[g]);
        const uint8_t* qp = q + 16 * part;
        const uint8_t* hp = hmask + 16 * part;
        for (size_t l = 0; l < 16; ++l) {
          const int v = ((qp[l] >> shift) & 3) - ((hp[l] & bit) ? 0 : 4);
          *y++ = dl * static_cast<float>(v);
        }
      }
    }
  }
}

// The 6-bit (scale, min) pair j (< 8) of the 12-byte Q4_K/Q5_K scales field:
// pairs 0..3 are the low 6 bits of bytes j and j + 4; pairs 4..7 take their
// low nibbles from byte j + 4 and their top two bits from the spare top bits
// of bytes j - 4 (scale) and j (min).
inline void ScaleMinK4(size_t j, const uint8_t* s, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Q4_K, 144 bytes: d, dmin (f16), scales[12], qs[128]. Four chunks of 64
// values: chunk c uses qs[32c .. 32c+31], low nibbles with pair 2c, high
// nibbles with pair 2c + 1; y = (d * sc) * q - (dmin * m).
void BlockQ4_K(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const float dmin = LoadHalf(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  for (size_t c = 0; c < 4; ++c, q += 32) {
    int sc, m;
    ScaleMinK4(2 * c, scales, &sc, &m);
    const float d1 = d * static_cast<float>(sc);
    const float m1 = dmin * static_cast<float>(m);
    ScaleMinK4(2 * c + 1, scales, &sc, &m);
    const float d2 = d * static_cast<float>(sc);
    const float m2 = dmin * static_cast<float>(m);
    for (size_t l = 0; l < 32; ++l) {
      *y++ = d1 * static_cast<float>(q[l] & 0x0f) - m1;
    }
    for (size_t l = 0; l < 32; ++l) {
      *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

// Q5_K, 176 bytes: d, dmin (f16), scales[12], qh[32], qs[128]. As Q4_K, plus
// a fifth bit (+16): for chunk c, bit 2c of qh[l] for the low-nibble value
// l, bit 2c + 1 for the high-nibble one.
void BlockQ5_K(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const float dmin = LoadHalf(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* q = b + 48;
  for (size_t c = 0; c < 4; ++c, q += 32) {
    int sc, m;
    ScaleMinK4(2 * c, scales, &sc, &m);
    const float d1 = d * static_cast<float>(sc);
    const float m1 = dmin * static_cast<float>(m);
    ScaleMinK4(2 * c + 1, scales, &sc, &m);
    const float d2 = d * static_cast<float>(sc);
    const float m2 = dmin * static_cast<float>(m);
    const uint8_t lo_bit = static_cast<uint8_t>(1u << (2 * c));
    const uint8_t hi_bit = static_cast<uint8_t>(2u << (2 * c));
    for (size_t l = 0; l < 32; ++l) {
      const int v = (q[l] & 0x0f) + ((qh[l] & lo_bit) ? 16 : 0);
      *y++ = d1 * static_cast<float>(v) - m1;
    }
    for (size_t l = 0; l < 32; ++l) {
      const int v = (q[l] >> 4) + ((qh[l] & hi_bit) ? 16 : 0);
      *y++ = d2 * static_cast<float>(v) - m2;
    }
  }
}

// Q6_K, 210 bytes: ql[128], qh[64], scales[16] (int8), d (f16). Two halves
// of 128 values; in half h, value 32k + l (k < 4, l < 32) takes its low
// nibble from ql[64h + l + 32 * (k & 1)] (k < 2: low nibble, else high) and
// its top two bits from qh[32h + l] at bit 2k; scale scales[8h + 2k + l/16];
// y = (d * scale) * (q - 32).
void BlockQ6_K(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = LoadHalf(b + 208);
  for (size_t half = 0; half < 2;
       ++half, y += 128, ql += 64, qh += 32, sc += 8) {
    for (size_t l = 0; l < 32; ++l) {
      const size_t is = l / 16;
      const int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
      y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
      y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
      y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
    }
  }
}

using BlockFn = void (*)(const uint8_t*, float*);

template <BlockFn kFn>
void DecodeBlocks(const uint8_t* src, size_t n_blocks, size_t block_bytes,
                  size_t block_elems, float* dst) {
  for (size_t i = 0; i < n_blocks; ++i) {
    kFn(src + i * block_bytes, dst + i * block_elems);
  }
}

// Validates `type` and `n`; returns the block geometry.
absl::StatusOr<GgmlTypeTraits> CheckArgs(GgmlType type, size_t n,
                                         const void* src, const void* dst) {
  const auto traits = TypeTraits(static_cast<uint32_t>(type));
  if (!traits || !IsSupportedWeightType(type)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "dequantisation of tensor type %s is not supported", TypeName(type)));
  }
  if (n % traits->block_elems != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%d values of type %s are not a whole number of %d-value blocks", n,
        TypeName(type), traits->block_elems));
  }
  if (n != 0 && (src == nullptr || dst == nullptr)) {
    return absl::InvalidArgumentError("dequantisation given a null buffer");
  }
  return *traits;
}

// F32 -> F16 rounding with the clamp described in dequant.h.
void RoundToHalf(float* v, size_t n, uint16_t* dst, uint64_t* clamped) {
  uint64_t count = 0;
  // Branch-free so that it vectorises. NaN fails the comparison and passes
  // through unchanged.
  for (size_t i = 0; i < n; ++i) {
    const bool out = std::fabs(v[i]) > kHalfMax;
    count += out;
    v[i] = out ? std::copysign(kHalfMax, v[i]) : v[i];
  }
  FloatToHalfN(v, dst, n);
  if (clamped != nullptr) *clamped += count;
}

}  // namespace

absl::Status DequantizeToF32(GgmlType type, const uint8_t* src, size_t n,
                             float* dst) {
  ASSIGN_OR_RETURN(const GgmlTypeTraits traits, CheckArgs(type, n, src, dst));
  const size_t nb = n / traits.block_elems;
  const size_t bb = traits.block_bytes;
  const size_t be = traits.block_elems;
  switch (type) {
    case GgmlType::kF32:
      if (n != 0) std::memcpy(dst, src, n * sizeof(float));
      break;
    case GgmlType::kF16: {
      // The source may be unaligned for uint16_t; convert in stack-sized
      // pieces through an aligned copy.
      constexpr size_t kChunk = 2048;
      uint16_t tmp[kChunk];
      for (size_t i = 0; i < n; i += kChunk) {
        const size_t len = std::min(kChunk, n - i);
        std::memcpy(tmp, src + 2 * i, 2 * len);
        HalfToFloatN(tmp, dst + i, len);
      }
      break;
    }
    case GgmlType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t bits =
            static_cast<uint16_t>(src[2 * i] | (src[2 * i + 1] << 8));
        dst[i] = Bf16ToFloat(bits);
      }
      break;
    case GgmlType::kQ4_0:
      DecodeBlocks<BlockQ4_0>(src, nb, bb, be, dst);
      break;
    case GgmlType::kQ4_1:
      DecodeBlocks<BlockQ4_1>(src, nb, bb, be, dst);
      break;
    case GgmlType::kQ5_0:
      DecodeBlocks<BlockQ5_0>(src, nb, bb, be, dst);
      break;
    case GgmlType::kQ5_1:
      DecodeBlocks<BlockQ5_1>(src, nb, bb, be, dst);
      break;
    case GgmlType::kQ8_0:
      DecodeBlocks<BlockQ8_0>(src, nb, bb, be, dst);
      break;
    case GgmlType::kQ2_K:
      DecodeBlocks<BlockQ2_K>(src, nb, bb, be, dst);
      break;
    case GgmlType::kQ3_K:
      DecodeBlocks<BlockQ3_K>(src, nb, bb, be, dst);
      break;
    case GgmlType::kQ4_K:
      DecodeBlocks<BlockQ4_K>(src, nb, bb, be, dst);
      break;
    case GgmlType::kQ5_K:
      DecodeBlocks<BlockQ5_K>(src, nb, bb, be, dst);
      break;
    case GgmlType::kQ6_K:
      DecodeBlocks<BlockQ6_K>(src, nb, bb, be, dst);
      break;
    default:
      // CheckArgs admits only the types above.
      return absl::InternalError(
          absl::StrFormat("dequantisation of tensor type %s is not implemented",
                          TypeName(type)));
  }
  return absl::OkStatus();
}

absl::Status DequantizeToF16(GgmlType type, const uint8_t* src, size_t n,
                             uint16_t* dst, uint64_t* clamped) {
  ASSIGN_OR_RETURN(const GgmlTypeTraits traits, CheckArgs(type, n, src, dst));
  if (type == GgmlType::kF16) {
    if (n != 0) std::memcpy(dst, src, n * sizeof(uint16_t));
    return absl::OkStatus();
  }
  // Decode a whole number of blocks at a time into a float buffer (a multiple
  // of both 32 and 256 values), then clamp and round it.
  constexpr size_t kChunk = 8 * kQK_K;
  static_assert(kChunk % kQK == 0);
  float tmp[kChunk];
  const size_t bytes_per_chunk =
      kChunk / traits.block_elems * traits.block_bytes;
  for (size_t i = 0, off = 0; i < n; i += kChunk, off += bytes_per_chunk) {
    const size_t len = std::min(kChunk, n - i);
    RETURN_IF_ERROR(DequantizeToF32(type, src + off, len, tmp));
    RoundToHalf(tmp, len, dst + i, clamped);
  }
  return absl::OkStatus();
}

}  // namespace m40llm
