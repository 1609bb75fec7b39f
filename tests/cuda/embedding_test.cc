// Embedding gather vs cpu::HalfToFloatRow on fresh random tables and ids.
// Tolerance: exact (relative L2 == 0): FP16 -> FP32 widening is exact.
#include "cuda/embedding.cuh"

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "engine/cpu_ops.h"
#include "gtest/gtest.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/support/test_support.h"

namespace m40llm::gpu {
namespace {

using m40llm::testing::PoisonedFloats;
using m40llm::testing::RandomHalves;
using m40llm::testing::ToDevice;
using m40llm::testing::ToHost;

TEST(EmbeddingGather, MatchesCpuWidening) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  constexpr int64_t kVocab = 1000;
  for (int64_t n_embd : {int64_t{1}, int64_t{7}, int64_t{256}, int64_t{4096 + 8 + 3}}) {
    for (int64_t n_tok : {1, 3, 16, 64}) {
      SCOPED_TRACE(::testing::Message() << "n_embd " << n_embd << " n_tok " << n_tok);
      const std::vector<uint16_t> table = RandomHalves(rng, kVocab * n_embd, -4.0f, 4.0f);
      std::uniform_int_distribution<int32_t> pick(0, kVocab - 1);
      std::vector<int32_t> ids(n_tok);
      for (int32_t& id : ids) id = pick(rng);
      ids[0] = kVocab - 1;  // the last row

      std::vector<float> want(n_tok * n_embd);
      for (int64_t t = 0; t < n_tok; ++t) {
        cpu::HalfToFloatRow(table.data() + ids[t] * n_embd, want.data() + t * n_embd, n_embd);
      }
      M40_ASSERT_OK_AND_ASSIGN(auto d_table, ToDevice(table));
      M40_ASSERT_OK_AND_ASSIGN(auto d_ids, ToDevice(ids));
      M40_ASSERT_OK_AND_ASSIGN(auto d_out, PoisonedFloats(want.size()));
      M40_ASSERT_OK(LaunchEmbeddingGather(d_table.get(), kVocab, n_embd, d_ids.get(), n_tok,
                                          d_out.get(), nullptr));
      M40_ASSERT_OK_AND_ASSIGN(auto got, ToHost(d_out));
      EXPECT_EQ(m40llm::testing::RelL2(got.data(), want.data(), want.size()), 0.0);
    }
  }
}

TEST(EmbeddingGather, OutOfRangeIdGivesNaNRow) {
  M40_REQUIRE_CUDA_DEVICE();
  std::mt19937 rng(m40llm::testing::TestSeed());
  constexpr int64_t kVocab = 10, kEmbd = 33;
  const std::vector<uint16_t> table = RandomHalves(rng, kVocab * kEmbd, -1.0f, 1.0f);
  const std::vector<int32_t> ids = {3, -1, static_cast<int32_t>(kVocab), 9};
  M40_ASSERT_OK_AND_ASSIGN(auto d_table, ToDevice(table));
  M40_ASSERT_OK_AND_ASSIGN(auto d_ids, ToDevice(ids));
  M40_ASSERT_OK_AND_ASSIGN(auto d_out, PoisonedFloats(ids.size() * kEmbd));
  M40_ASSERT_OK(d_out.FillBytes(0));
  M40_ASSERT_OK(LaunchEmbeddingGather(d_table.get(), kVocab, kEmbd, d_ids.get(), ids.size(),
                                      d_out.get(), nullptr));
  M40_ASSERT_OK_AND_ASSIGN(auto got, ToHost(d_out));
  for (int64_t c = 0; c < kEmbd; ++c) {
    EXPECT_EQ(got[0 * kEmbd + c], HalfToFloat(table[3 * kEmbd + c]));
    EXPECT_TRUE(std::isnan(got[1 * kEmbd + c]));
    EXPECT_TRUE(std::isnan(got[2 * kEmbd + c]));
    EXPECT_EQ(got[3 * kEmbd + c], HalfToFloat(table[9 * kEmbd + c]));
  }
}

TEST(EmbeddingGather, RejectsBadArguments) {
  EXPECT_EQ(LaunchEmbeddingGather(nullptr, 10, 4, nullptr, 1, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LaunchEmbeddingGather(nullptr, 10, -1, nullptr, 1, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(LaunchEmbeddingGather(nullptr, 10, 4, nullptr, 0, nullptr, nullptr).ok());
}

}  // namespace
}  // namespace m40llm::gpu
