// KV-cache append vs the CPU engine's append (cpu::FloatToHalfRow at
// CpuBackend's cache index) on fresh random rows, scattered (slot, position)
// pairs, MHA/GQA head counts, even and odd head_dims, aligned (two values a
// thread) and misaligned (one value a thread) inputs, with rounding edge
// cases mixed in (ties, subnormals, overflow, infinities, NaN, -0).
// Tolerance: none; every FP16 bit of both caches must equal the CPU's, and
// every cache entry not appended must keep its poison.
#include "cuda/kv_cache.cuh"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "engine/cpu_ops.h"
#include "gtest/gtest.h"
#include "tests/cuda/cuda_test_util.h"

namespace m40llm::gpu {
namespace {

using m40llm::testing::RandomFloats;
using m40llm::testing::ToDevice;
using m40llm::testing::ToHost;

constexpr uint16_t kPoison = 0xffff;  // a NaN the kernel never produces from finite input

struct CacheShape {
  int max_slots;
  int ctx_per_slot;
  int n_head_kv;
  int head_dim;
};

// The cache of shape c in device buffers k and v.
KvCacheLayer CacheOf(const CacheShape& c, uint16_t* k, uint16_t* v) {
  return {.k = k,
          .v = v,
          .max_slots = c.max_slots,
          .n_head_kv = c.n_head_kv,
          .ctx_per_slot = c.ctx_per_slot,
          .head_dim = c.head_dim};
}

// As CpuBackend::KvIndex within one layer.
size_t KvIndex(const CacheShape& c, int slot, int kv_head, int pos) {
  size_t i = static_cast<size_t>(slot);
  i = i * c.n_head_kv + kv_head;
  i = i * c.ctx_per_slot + pos;
  return i * c.head_dim;
}

// Values whose FP16 rounding is easy to get wrong, dropped into random rows.
const float kEdgeValues[] = {
    0.0f,
    -0.0f,
    1.0f + 1.0f / 2048.0f,  // tie, rounds down to even
    1.0f + 3.0f / 2048.0f,  // tie, rounds up to even
    65504.0f,               // largest half
    65519.0f,               // rounds down to 65504
    65520.0f,               // rounds to infinity
    -1.0e6f,                // overflows to -inf
    5.9604645e-08f,         // 2^-24, smallest subnormal half
    2.9802322e-08f,         // 2^-25, tie to zero
    4.4703484e-08f,         // 1.5 * 2^-25, rounds up to 2^-24
    6.097555e-05f,          // just under the smallest normal half
    std::numeric_limits<float>::infinity(),
    -std::numeric_limits<float>::infinity(),
    std::numeric_limits<float>::quiet_NaN(),
};

// Random rows with some edge values in them.
std::vector<float> Rows(std::mt19937& rng, size_t n) {
  std::vector<float> v = RandomFloats(rng, n, -4.0f, 4.0f);
  std::uniform_int_distribution<size_t> where(0, n - 1);
  for (float e : kEdgeValues) {
    if (n >= 64) v[where(rng)] = e;
  }
  return v;
}

// Runs one append on the GPU and on the CPU and compares every cache bit.
// `offset` floats of padding before k and v on the device (1 makes them
// misaligned for 8-byte loads); `gap` NaN floats after each token's row
// (rows inside fused QKV rows: row_stride = kv_dim + gap).
void CheckAppend(std::mt19937& rng, const CacheShape& c, int n_tok, int offset, int gap = 0) {
  SCOPED_TRACE(::testing::Message() << "slots " << c.max_slots << " ctx " << c.ctx_per_slot
                                    << " n_head_kv " << c.n_head_kv << " head_dim " << c.head_dim
                                    << " n_tok " << n_tok << " offset " << offset << " gap "
                                    << gap);
  const int kv_dim = c.n_head_kv * c.head_dim;
  const std::vector<float> k = Rows(rng, static_cast<size_t>(n_tok) * kv_dim);
  const std::vector<float> v = Rows(rng, static_cast<size_t>(n_tok) * kv_dim);
  // Distinct (slot, position) pairs, in random order.
  std::vector<int32_t> cells(static_cast<size_t>(c.max_slots) * c.ctx_per_slot);
  for (size_t i = 0; i < cells.size(); ++i) cells[i] = static_cast<int32_t>(i);
  std::shuffle(cells.begin(), cells.end(), rng);
  ASSERT_LE(static_cast<size_t>(n_tok), cells.size());
  std::vector<int32_t> slots(n_tok), positions(n_tok);
  for (int t = 0; t < n_tok; ++t) {
    slots[t] = cells[t] / c.ctx_per_slot;
    positions[t] = cells[t] % c.ctx_per_slot;
  }

  const size_t cache_size = KvIndex(c, c.max_slots, 0, 0);
  std::vector<uint16_t> want_k(cache_size, kPoison), want_v(cache_size, kPoison);
  for (int t = 0; t < n_tok; ++t) {
    for (int g = 0; g < c.n_head_kv; ++g) {
      const size_t at = KvIndex(c, slots[t], g, positions[t]);
      const size_t src = static_cast<size_t>(t) * kv_dim + static_cast<size_t>(g) * c.head_dim;
      cpu::FloatToHalfRow(&k[src], &want_k[at], c.head_dim);
      cpu::FloatToHalfRow(&v[src], &want_v[at], c.head_dim);
    }
  }

  std::vector<float> k_pad(offset, 0.0f), v_pad(offset, 0.0f);
  for (int t = 0; t < n_tok; ++t) {
    k_pad.insert(k_pad.end(), k.begin() + t * kv_dim, k.begin() + (t + 1) * kv_dim);
    v_pad.insert(v_pad.end(), v.begin() + t * kv_dim, v.begin() + (t + 1) * kv_dim);
    k_pad.insert(k_pad.end(), gap, std::numeric_limits<float>::quiet_NaN());
    v_pad.insert(v_pad.end(), gap, std::numeric_limits<float>::quiet_NaN());
  }
  M40_ASSERT_OK_AND_ASSIGN(auto d_k, ToDevice(k_pad));
  M40_ASSERT_OK_AND_ASSIGN(auto d_v, ToDevice(v_pad));
  M40_ASSERT_OK_AND_ASSIGN(auto d_slots, ToDevice(slots));
  M40_ASSERT_OK_AND_ASSIGN(auto d_pos, ToDevice(positions));
  M40_ASSERT_OK_AND_ASSIGN(auto d_kc, ToDevice(std::vector<uint16_t>(cache_size, kPoison)));
  M40_ASSERT_OK_AND_ASSIGN(auto d_vc, ToDevice(std::vector<uint16_t>(cache_size, kPoison)));
  M40_ASSERT_OK(LaunchKvAppend({.k = d_k.get() + offset,
                                .v = d_v.get() + offset,
                                .n_tok = n_tok,
                                .slots = d_slots.get(),
                                .positions = d_pos.get(),
                                .cache = CacheOf(c, d_kc.get(), d_vc.get()),
                                .row_stride = gap > 0 ? kv_dim + gap : 0},
                               nullptr));
  M40_ASSERT_OK_AND_ASSIGN(auto got_k, ToHost(d_kc));
  M40_ASSERT_OK_AND_ASSIGN(auto got_v, ToHost(d_vc));
  size_t bad = 0;
  for (size_t i = 0; i < cache_size; ++i) {
    if (got_k[i] != want_k[i] || got_v[i] != want_v[i]) {
      if (++bad <= 5) {
        ADD_FAILURE() << "cache index " << i << ": K got 0x" << std::hex << got_k[i] << " want 0x"
                      << want_k[i] << ", V got 0x" << got_v[i] << " want 0x" << want_v[i]
                      << std::dec;
      }
    }
  }
  EXPECT_EQ(bad, 0u) << "of " << cache_size << " cache entries differ";
}

TEST(KvAppend, BitExactAgainstCpu) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const CacheShape shapes[] = {
      {1, 16, 1, 64},   // MQA-like, one slot
      {3, 50, 8, 128},  // GQA kv heads
      {4, 37, 4, 80},   // head_dim not a power of two
      {2, 20, 3, 7},    // odd head_dim: one value a thread
      {2, 9, 2, 256},   // largest common head_dim
  };
  int cases = 0;
  for (const CacheShape& c : shapes) {
    for (int n_tok : {1, 5, 17}) {
      for (int offset : {0, 1}) {
        for (int gap : {0, 3, 8}) {
          CheckAppend(rng, c, std::min(n_tok, c.max_slots * c.ctx_per_slot), offset, gap);
          ++cases;
        }
      }
    }
  }
  std::printf("KvAppend bit-exact over %d cases\n", cases);
}

// Tokens with a slot or position out of range are skipped; the others land.
TEST(KvAppend, SkipsOutOfRangeSlotsAndPositions) {
  M40_REQUIRE_CUDA_DEVICE();
  const CacheShape c{2, 4, 2, 8};
  const int kv_dim = c.n_head_kv * c.head_dim;
  const std::vector<int32_t> slots = {-1, 2, 0, 1, 1};
  const std::vector<int32_t> positions = {0, 0, -1, 4, 3};  // only token 4 is valid
  const int n_tok = static_cast<int>(slots.size());
  std::mt19937 rng(m40llm::testing::TestSeed());
  const std::vector<float> k = RandomFloats(rng, static_cast<size_t>(n_tok) * kv_dim, -1, 1);
  const std::vector<float> v = RandomFloats(rng, static_cast<size_t>(n_tok) * kv_dim, -1, 1);
  const size_t cache_size = KvIndex(c, c.max_slots, 0, 0);
  M40_ASSERT_OK_AND_ASSIGN(auto d_k, ToDevice(k));
  M40_ASSERT_OK_AND_ASSIGN(auto d_v, ToDevice(v));
  M40_ASSERT_OK_AND_ASSIGN(auto d_slots, ToDevice(slots));
  M40_ASSERT_OK_AND_ASSIGN(auto d_pos, ToDevice(positions));
  M40_ASSERT_OK_AND_ASSIGN(auto d_kc, ToDevice(std::vector<uint16_t>(cache_size, kPoison)));
  M40_ASSERT_OK_AND_ASSIGN(auto d_vc, ToDevice(std::vector<uint16_t>(cache_size, kPoison)));
  M40_ASSERT_OK(LaunchKvAppend({.k = d_k.get(),
                                .v = d_v.get(),
                                .n_tok = n_tok,
                                .slots = d_slots.get(),
                                .positions = d_pos.get(),
                                .cache = CacheOf(c, d_kc.get(), d_vc.get())},
                               nullptr));
  M40_ASSERT_OK_AND_ASSIGN(auto got_k, ToHost(d_kc));
  std::vector<uint16_t> want(cache_size, kPoison);
  for (int g = 0; g < c.n_head_kv; ++g) {
    cpu::FloatToHalfRow(&k[4 * kv_dim + g * c.head_dim], &want[KvIndex(c, 1, g, 3)], c.head_dim);
  }
  EXPECT_EQ(got_k, want);
}

TEST(KvAppend, RejectsBadArguments) {
  uint16_t* cache = reinterpret_cast<uint16_t*>(16);
  const float* x = reinterpret_cast<const float*>(16);
  const int32_t* idx = reinterpret_cast<const int32_t*>(16);
  // The status code of a call whose arguments are valid but for `edit`.
  const KvAppendArgs valid{.k = x,
                           .v = x,
                           .n_tok = 1,
                           .slots = idx,
                           .positions = idx,
                           .cache = {.k = cache,
                                     .v = cache,
                                     .max_slots = 1,
                                     .n_head_kv = 1,
                                     .ctx_per_slot = 1,
                                     .head_dim = 8}};
  auto code = [&](auto edit) {
    KvAppendArgs a = valid;
    edit(a);
    return LaunchKvAppend(a, nullptr).code();
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(code([](KvAppendArgs& a) { a.n_tok = -1; }), kInvalid);
  EXPECT_EQ(code([](KvAppendArgs& a) { a.cache.n_head_kv = 0; }), kInvalid);
  EXPECT_EQ(code([](KvAppendArgs& a) { a.cache.ctx_per_slot = 0; }), kInvalid);
  EXPECT_EQ(code([](KvAppendArgs& a) { a.slots = nullptr; }), kInvalid);
  EXPECT_EQ(code([](KvAppendArgs& a) {
              a.cache.n_head_kv = 1 << 20;
              a.cache.head_dim = 1 << 12;
            }),
            kInvalid);
  // Nothing to append: OK without touching any pointer.
  EXPECT_TRUE(
      LaunchKvAppend(
          {.n_tok = 0, .cache = {.max_slots = 1, .n_head_kv = 1, .ctx_per_slot = 1, .head_dim = 8}},
          nullptr)
          .ok());
}

}  // namespace
}  // namespace m40llm::gpu
