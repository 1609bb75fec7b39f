// Philox4x32-10 counter-based random numbers (Salmon et al., "Parallel Random
// Numbers: As Easy as 1, 2, 3", SC'11), shared verbatim by host and device
// code so that a CUDA kernel reproduces the host sampler's draws bit for bit.
//
// Header-only, C++17, no standard-library calls: it builds in host C++20,
// host C++17 and nvcc device code alike.
#pragma once

#include <cstdint>

#include "engine/hd.h"

namespace m40llm {

// Four 32-bit words: a Philox counter or one Philox output block.
struct Philox4x32Block {
  uint32_t v[4];
};

// The Philox4x32 round multipliers and Weyl key increments (Random123).
inline constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
inline constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
inline constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
inline constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

// Philox4x32 with 10 rounds: encrypts `counter` under the 64-bit key
// (key0, key1). Each round multiplies words 0 and 2 by M0 and M1, swaps the
// halves Feistel-style and mixes in the key; the key is bumped by (W0, W1)
// between rounds.
M40_HD inline Philox4x32Block Philox4x32_10(Philox4x32Block counter,
                                            uint32_t key0, uint32_t key1) {
  uint32_t c0 = counter.v[0], c1 = counter.v[1];
  uint32_t c2 = counter.v[2], c3 = counter.v[3];
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key0 += kPhiloxW0;
      key1 += kPhiloxW1;
    }
#ifdef __CUDA_ARCH__
    const uint32_t hi0 = __umulhi(kPhiloxM0, c0), lo0 = kPhiloxM0 * c0;
    const uint32_t hi1 = __umulhi(kPhiloxM1, c2), lo1 = kPhiloxM1 * c2;
#else
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32);
    const uint32_t lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32);
    const uint32_t lo1 = static_cast<uint32_t>(p1);
#endif
    const uint32_t n0 = hi1 ^ c1 ^ key0;
    const uint32_t n2 = hi0 ^ c3 ^ key1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  Philox4x32Block out;
  out.v[0] = c0;
  out.v[1] = c1;
  out.v[2] = c2;
  out.v[3] = c3;
  return out;
}

// The 32 random bits for draw `lane` of (seed, stream, step). The mapping is
// part of the host/device contract and must not change:
//   key     = (low32(seed), high32(seed))
//   counter = (low32(step), high32(step), low32(stream),
//              high32(stream) XOR (lane >> 2))
//   result  = Philox4x32_10(counter, key).v[lane & 3]
// Every (stream, step, lane) with stream < 2^32 names a distinct output word;
// beyond that, streams alias lanes >= 4, which no caller approaches (stream
// is the index of a sequence within one request).
M40_HD inline uint32_t PhiloxBits(uint64_t seed, uint64_t stream, uint64_t step,
                                  uint32_t lane) {
  Philox4x32Block counter;
  counter.v[0] = static_cast<uint32_t>(step);
  counter.v[1] = static_cast<uint32_t>(step >> 32);
  counter.v[2] = static_cast<uint32_t>(stream);
  counter.v[3] = static_cast<uint32_t>(stream >> 32) ^ (lane >> 2);
  const Philox4x32Block out = Philox4x32_10(
      counter, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return out.v[lane & 3];
}

// A float in [0, 1): the top 24 bits of PhiloxBits times 2^-24. Both the
// integer-to-float conversion (< 2^24) and the scaling (a power of two) are
// exact, so every platform yields the same value; the largest is 1 - 2^-24.
M40_HD inline float UniformFloat(uint64_t seed, uint64_t stream, uint64_t step,
                                 uint32_t lane) {
  const uint32_t top24 = PhiloxBits(seed, stream, step, lane) >> 8;
  return static_cast<float>(top24) * (1.0f / 16777216.0f);
}

}  // namespace m40llm
