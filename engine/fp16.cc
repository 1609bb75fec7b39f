// Batched half <-> float conversion. On x86-64 CPUs with F16C and AVX2 the
// hardware converts eight values at a time; groups containing a NaN go through
// the scalar code instead, because the hardware quietens signalling NaNs and
// the scalar functions (the definition of the result) do not.
#include "engine/fp16.h"

#include <cstddef>
#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define M40_FP16_HAVE_X86 1
#else
#define M40_FP16_HAVE_X86 0
#endif

namespace m40llm {
namespace {

void HalfToFloatScalar(const uint16_t* src, float* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = HalfToFloat(src[i]);
}

void FloatToHalfScalar(const float* src, uint16_t* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = FloatToHalf(src[i]);
}

#if M40_FP16_HAVE_X86

__attribute__((target("f16c,avx2"))) void HalfToFloatF16c(const uint16_t* src,
                                                          float* dst,
                                                          size_t n) {
  const __m128i exp_mask = _mm_set1_epi16(0x7c00);
  const __m128i abs_mask = _mm_set1_epi16(0x7fff);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    // NaN halves have |h| > 0x7c00 (signed 16-bit compare is fine: |h| is
    // at most 0x7fff).
    const __m128i nan = _mm_cmpgt_epi16(_mm_and_si128(h, abs_mask), exp_mask);
    if (_mm_movemask_epi8(nan) != 0) {
      HalfToFloatScalar(src + i, dst + i, 8);
      continue;
    }
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  HalfToFloatScalar(src + i, dst + i, n - i);
}

__attribute__((target("f16c,avx2"))) void FloatToHalfF16c(const float* src,
                                                          uint16_t* dst,
                                                          size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(src + i);
    if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0) {
      FloatToHalfScalar(src + i, dst + i, 8);
      continue;
    }
    // Round to nearest even, no exception reporting: IEEE conversion, the
    // same as FloatToHalf for every non-NaN input (overflow to inf included).
    const __m128i h =
        _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
  FloatToHalfScalar(src + i, dst + i, n - i);
}

bool HasF16c() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx2");
  }();
  return has;
}

#endif  // M40_FP16_HAVE_X86

}  // namespace

void HalfToFloatN(const uint16_t* src, float* dst, size_t n) {
#if M40_FP16_HAVE_X86
  if (HasF16c()) {
    HalfToFloatF16c(src, dst, n);
    return;
  }
#endif
  HalfToFloatScalar(src, dst, n);
}

void FloatToHalfN(const float* src, uint16_t* dst, size_t n) {
#if M40_FP16_HAVE_X86
  if (HasF16c()) {
    FloatToHalfF16c(src, dst, n);
    return;
  }
#endif
  FloatToHalfScalar(src, dst, n);
}

}  // namespace m40llm
