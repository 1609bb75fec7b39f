// IEEE binary16 ("half") and bfloat16 conversions to and from binary32.
//
// Header-only and plain integer arithmetic so that host code and CUDA kernels
// share one bit-exact definition; no F16C or other ISA extension is needed.
// Must stay valid C++17 (CUDA sources include it). The batched helpers at the
// bottom live in fp16.cc and use F16C where the CPU has it, with results
// identical to the scalar functions for every input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "engine/hd.h"

namespace m40llm {

// Largest finite binary16 value.
inline constexpr float kHalfMax = 65504.0f;

namespace fp16_internal {

M40_HD inline uint32_t FloatBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

M40_HD inline float BitsToFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

}  // namespace fp16_internal

// Exact widening of a binary16 bit pattern. Subnormals become normal floats;
// infinities stay infinite; a NaN keeps its sign and payload (shifted into
// the top of the float mantissa, so it is not quietened).
M40_HD inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1fu) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf or NaN
  } else if (exp != 0) {
    // Rebias the exponent: 15 -> 127.
    bits = sign | ((exp + (127 - 15)) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;  // signed zero
  } else {
    // Subnormal: value = mant * 2^-24. Shift until the implicit bit (0x400)
    // appears; a half with that bit set and exponent field 1 is 2^-14.
    uint32_t e = 127 - 14;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
  }
  return fp16_internal::BitsToFloat(bits);
}

// Rounds a float to the nearest binary16, ties to even. Finite values whose
// magnitude reaches 65520 (the midpoint between 65504 and 2^16) become
// infinity, as IEEE requires; tiny values round into the subnormal range or to
// signed zero. NaN stays NaN with its sign and the top 10 payload bits; when
// those bits are all zero the quiet bit is set so the result is not infinity.
M40_HD inline uint16_t FloatToHalf(float f) {
  const uint32_t x = fp16_internal::FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t a = x & 0x7fffffffu;  // magnitude bits
  if (a > 0x7f800000u) {               // NaN
    uint32_t payload = (a >> 13) & 0x3ffu;
    if (payload == 0) payload = 0x200u;
    return static_cast<uint16_t>(sign | 0x7c00u | payload);
  }
  if (a >= 0x477ff000u) {  // >= 65520.0f, including +-inf
    return static_cast<uint16_t>(sign | 0x7c00u);
  }
  if (a >= 0x38800000u) {  // >= 2^-14: normal half
    // Drop 13 mantissa bits and rebias 127 -> 15. A carry out of the mantissa
    // on round-up correctly increments the exponent.
    uint32_t h = (a >> 13) - ((127u - 15u) << 10);
    const uint32_t rest = a & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  if (a <= 0x33000000u) {  // <= 2^-25: rounds to zero (2^-25 is a tie to 0)
    return sign;
  }
  // Subnormal half: result = round(value / 2^-24). With the implicit bit
  // restored, value = m * 2^(e - 150), so shift m right by 126 - e, where e is
  // in [102, 112] here and the shift in [14, 24].
  const uint32_t e = a >> 23;
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - e;
  uint32_t h = m >> shift;
  const uint32_t rest = m & ((1u << shift) - 1u);
  const uint32_t halfway = 1u << (shift - 1u);
  if (rest > halfway || (rest == halfway && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

// Exact widening of a bfloat16 bit pattern (it is the top half of a float).
M40_HD inline float Bf16ToFloat(uint16_t b) {
  return fp16_internal::BitsToFloat(static_cast<uint32_t>(b) << 16);
}

// Rounds a float to the nearest bfloat16, ties to even; overflow goes to
// infinity. NaN stays NaN (quiet bit forced so truncation cannot make it inf).
M40_HD inline uint16_t FloatToBf16(float f) {
  const uint32_t x = fp16_internal::FloatBits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((x >> 16) | 0x0040u);
  }
  const uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>((x + rounding) >> 16);
}

// Batched forms, bit-identical to the scalar functions for every input
// (host only; defined in fp16.cc, using F16C when the CPU supports it).
void HalfToFloatN(const uint16_t* src, float* dst, size_t n);
void FloatToHalfN(const float* src, uint16_t* dst, size_t n);

}  // namespace m40llm
