// Decode attention vs a CPU reference written as CpuBackend::Forward does it
// (cpu::HalfToFloatRow, cpu::Dot * 1/sqrt(head_dim), cpu::Softmax, then the
// probability-weighted sum of V rows), on fresh random queries and caches:
// MHA, GQA (groups 2, 3, 4, 7, 8) and MQA (groups 8, 32), head_dim 8, 32, 64,
// 80, 96, 128, 256; lengths 1, 7, 100, 1000, 4096 alone (single pass and split
// with merge) and mixed in one batch with distinct slots; with a full, a
// reduced and no workspace; and prefill as one entry per query token.
// Every cache entry a sequence must not read (other slots, positions at or
// past its length) holds NaN, so any leak shows in the output, which is
// itself poisoned with NaN before each call.
// Tolerance: relative L2 <= 1e-5 per case (FP32 sums in another order, and
// exp(s - running max) merged across tiles and splits).
#include "cuda/attention.cuh"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "engine/cpu_ops.h"
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

struct Heads {
  int n_head;
  int n_head_kv;
  int head_dim;
};

enum class Workspace { kFull, kHalf, kNone };

// One layer's cache with random K/V in the (slot, position) cells the
// sequences own and NaN everywhere else.
struct Problem {
  Heads h;
  int max_slots = 0;
  int ctx_per_slot = 0;
  std::vector<int32_t> slots;    // (n_seq)
  std::vector<int32_t> lengths;  // (n_seq)
  std::vector<float> q;          // (n_seq, n_head, head_dim)
  std::vector<uint16_t> k, v;    // (max_slots, n_head_kv, ctx_per_slot, head_dim)

  int n_seq() const { return static_cast<int>(slots.size()); }
  size_t Index(int slot, int kv_head, int pos) const {
    return ((static_cast<size_t>(slot) * h.n_head_kv + kv_head) * ctx_per_slot + pos) * h.head_dim;
  }
};

// Entry s attends to lengths[s] positions of its slot: distinct random slots
// among max_slots (>= lengths.size()), or all `shared_slot` when >= 0
// (prefill: the entries are the query tokens of one sequence).
Problem MakeProblem(std::mt19937& rng, const Heads& h, const std::vector<int32_t>& lengths,
                    int max_slots, int ctx_per_slot, int shared_slot = -1) {
  Problem p;
  p.h = h;
  p.max_slots = max_slots;
  p.ctx_per_slot = ctx_per_slot;
  p.lengths = lengths;
  const int n_seq = static_cast<int>(lengths.size());
  std::vector<int32_t> order(max_slots);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  p.slots.resize(n_seq);
  for (int s = 0; s < n_seq; ++s) p.slots[s] = shared_slot >= 0 ? shared_slot : order[s];
  p.q = RandomFloats(rng, static_cast<size_t>(n_seq) * h.n_head * h.head_dim, -2.0f, 2.0f);
  const size_t cache_size = p.Index(max_slots, 0, 0);
  p.k.assign(cache_size, kHalfNaN);
  p.v.assign(cache_size, kHalfNaN);
  // Each used slot gets random K/V up to the longest length of its entries.
  std::vector<int32_t> fill(max_slots, 0);
  for (int s = 0; s < n_seq; ++s) fill[p.slots[s]] = std::max(fill[p.slots[s]], lengths[s]);
  for (int slot = 0; slot < max_slots; ++slot) {
    for (int g = 0; g < h.n_head_kv && fill[slot] > 0; ++g) {
      const size_t n = static_cast<size_t>(fill[slot]) * h.head_dim;
      const std::vector<uint16_t> kr = RandomHalves(rng, n, -1.0f, 1.0f);
      const std::vector<uint16_t> vr = RandomHalves(rng, n, -1.0f, 1.0f);
      std::copy(kr.begin(), kr.end(), p.k.begin() + p.Index(slot, g, 0));
      std::copy(vr.begin(), vr.end(), p.v.begin() + p.Index(slot, g, 0));
    }
  }
  return p;
}

// The CPU engine's attention for one query token per entry.
std::vector<float> Reference(const Problem& p) {
  const int hd = p.h.head_dim;
  const int group = p.h.n_head / p.h.n_head_kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  std::vector<float> out(p.q.size());
  std::vector<float> score(p.ctx_per_slot);
  std::vector<float> row(hd);
  for (int s = 0; s < p.n_seq(); ++s) {
    for (int head = 0; head < p.h.n_head; ++head) {
      const int g = head / group;
      const int n_pos = p.lengths[s];
      const float* qh = &p.q[(static_cast<size_t>(s) * p.h.n_head + head) * hd];
      const size_t base = p.Index(p.slots[s], g, 0);
      for (int j = 0; j < n_pos; ++j) {
        cpu::HalfToFloatRow(&p.k[base + static_cast<size_t>(j) * hd], row.data(), hd);
        score[j] = cpu::Dot(qh, row.data(), hd) * scale;
      }
      cpu::Softmax(score.data(), n_pos);
      float* o = &out[(static_cast<size_t>(s) * p.h.n_head + head) * hd];
      std::fill(o, o + hd, 0.0f);
      for (int j = 0; j < n_pos; ++j) {
        cpu::HalfToFloatRow(&p.v[base + static_cast<size_t>(j) * hd], row.data(), hd);
        for (int d = 0; d < hd; ++d) o[d] += score[j] * row[d];
      }
    }
  }
  return out;
}

// The GPU result for `p` (out poisoned with NaN first); max_len as given or
// the longest length.
absl::StatusOr<std::vector<float>> RunGpu(const Problem& p, Workspace ws, int max_len = 0,
                                          int fixed_split_len = 0) {
  if (max_len == 0) max_len = *std::max_element(p.lengths.begin(), p.lengths.end());
  ASSIGN_OR_RETURN(auto d_q, ToDevice(p.q));
  ASSIGN_OR_RETURN(auto d_slots, ToDevice(p.slots));
  ASSIGN_OR_RETURN(auto d_len, ToDevice(p.lengths));
  ASSIGN_OR_RETURN(auto d_k, ToDevice(p.k));
  ASSIGN_OR_RETURN(auto d_v, ToDevice(p.v));
  ASSIGN_OR_RETURN(auto d_out, PoisonedFloats(p.q.size()));
  size_t ws_bytes =
      DecodeAttentionWorkspaceBytes(p.n_seq(), p.h.n_head, p.h.head_dim, p.ctx_per_slot);
  if (ws == Workspace::kHalf) ws_bytes /= 2;
  if (ws == Workspace::kNone) ws_bytes = 0;
  ASSIGN_OR_RETURN(auto d_ws, gpu::DeviceBuffer<uint8_t>::Allocate(ws_bytes));
  RETURN_IF_ERROR(d_ws.FillBytes(0xff));  // stale scratch must not matter
  RETURN_IF_ERROR(LaunchDecodeAttention({.q = d_q.get(),
                                         .n_seq = p.n_seq(),
                                         .n_head = p.h.n_head,
                                         .slots = d_slots.get(),
                                         .lengths = d_len.get(),
                                         .max_len = max_len,
                                         .cache = {.k = d_k.get(),
                                                   .v = d_v.get(),
                                                   .max_slots = p.max_slots,
                                                   .n_head_kv = p.h.n_head_kv,
                                                   .ctx_per_slot = p.ctx_per_slot,
                                                   .head_dim = p.h.head_dim},
                                         .workspace = d_ws.get(),
                                         .workspace_bytes = ws_bytes,
                                         .out = d_out.get(),
                                         .fixed_split_len = fixed_split_len},
                                        nullptr));
  CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  return ToHost(d_out);
}

const char* Name(Workspace ws) {
  switch (ws) {
    case Workspace::kFull:
      return "full";
    case Workspace::kHalf:
      return "half";
    case Workspace::kNone:
      return "none";
  }
  return "?";
}

struct Stats {
  double worst = 0;
  int cases = 0;
};

void CheckCase(std::mt19937& rng, const Heads& h, const std::vector<int32_t>& lengths, Workspace ws,
               Stats* stats) {
  ::testing::Message lens;
  for (int32_t l : lengths) lens << l << " ";
  SCOPED_TRACE(::testing::Message()
               << "n_head " << h.n_head << " n_head_kv " << h.n_head_kv << " head_dim "
               << h.head_dim << " lengths " << lens << "workspace " << Name(ws));
  const int max_len = *std::max_element(lengths.begin(), lengths.end());
  // Two spare slots and a few spare positions, all NaN.
  const Problem p = MakeProblem(rng, h, lengths, static_cast<int>(lengths.size()) + 2, max_len + 3);
  const std::vector<float> want = Reference(p);
  M40_ASSERT_OK_AND_ASSIGN(const std::vector<float> got, RunGpu(p, ws));
  const double err = m40llm::testing::RelL2(got.data(), want.data(), want.size());
  EXPECT_LE(err, kTolerance);
  stats->worst = std::max(stats->worst, err);
  ++stats->cases;
}

TEST(DecodeAttention, SingleSequencesMatchCpuReference) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const Heads heads[] = {
      {8, 8, 64},    // MHA
      {32, 8, 128},  // GQA, group 4 (llama 3 8B)
      {28, 4, 128},  // GQA, group 7: a padded head tile
      {12, 4, 80},   // GQA, group 3, head_dim 80 (lanes past the row idle)
      {8, 1, 128},   // MQA, group 8
      {32, 1, 64},   // MQA, group 32: four head tiles share the kv head
      {4, 2, 256},   // GQA, group 2, the largest head_dim
  };
  Stats stats;
  for (const Heads& h : heads) {
    for (int32_t len : {1, 7, 100, 1000, 4096}) CheckCase(rng, h, {len}, Workspace::kFull, &stats);
  }
  std::printf("DecodeAttention single: worst relative L2 %.3g over %d cases (tolerance %.0e)\n",
              stats.worst, stats.cases, kTolerance);
}

TEST(DecodeAttention, SmallAndOddHeadDims) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const Heads heads[] = {{2, 2, 8}, {6, 3, 32}, {6, 2, 96}, {4, 4, 40}, {16, 2, 136}};
  Stats stats;
  for (const Heads& h : heads) {
    for (int32_t len : {1, 7, 300, 1000}) CheckCase(rng, h, {len}, Workspace::kFull, &stats);
  }
  std::printf("DecodeAttention odd dims: worst relative L2 %.3g over %d cases\n", stats.worst,
              stats.cases);
}

// Sequences of different lengths in distinct slots in one call: some fit one
// split, others are split and merged; spare slots hold NaN.
TEST(DecodeAttention, MixedBatchMatchesCpuReference) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const std::vector<int32_t> lengths = {1, 7, 100, 1000, 4096, 300, 513, 2};
  Stats stats;
  for (const Heads& h : {Heads{32, 8, 128}, Heads{16, 16, 64}, Heads{8, 1, 128}}) {
    for (Workspace ws : {Workspace::kFull, Workspace::kHalf, Workspace::kNone}) {
      CheckCase(rng, h, lengths, ws, &stats);
    }
  }
  // A long context alone with no or half the workspace: fewer splits.
  for (Workspace ws : {Workspace::kHalf, Workspace::kNone}) {
    CheckCase(rng, Heads{32, 8, 128}, {4096}, ws, &stats);
  }
  std::printf("DecodeAttention batch: worst relative L2 %.3g over %d cases\n", stats.worst,
              stats.cases);
}

// Other slots and the positions past each length are NaN; the sequences
// under test must not see them, whatever max_len says (here far above every
// length), and a sequence with a bad slot or length gets NaN without
// disturbing the others.
TEST(DecodeAttention, SlotIsolationAndInvalidEntries) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const Heads h{8, 2, 64};
  Problem p = MakeProblem(rng, h, {5, 700, 64, 1500}, /*max_slots=*/7, /*ctx_per_slot=*/4096);
  const std::vector<float> want_valid = Reference(p);
  M40_ASSERT_OK_AND_ASSIGN(const std::vector<float> got, RunGpu(p, Workspace::kFull, 4096));
  EXPECT_LE(m40llm::testing::RelL2(got.data(), want_valid.data(), want_valid.size()), kTolerance);

  // Entries 1 and 3 broken: a slot past max_slots, and a length past max_len.
  const size_t per_seq = static_cast<size_t>(h.n_head) * h.head_dim;
  p.slots[1] = p.max_slots;
  p.lengths[3] = 1501;
  M40_ASSERT_OK_AND_ASSIGN(const std::vector<float> got2, RunGpu(p, Workspace::kFull, 1500));
  for (int s : {0, 2}) {
    EXPECT_LE(m40llm::testing::RelL2(&got2[s * per_seq], &want_valid[s * per_seq], per_seq),
              kTolerance)
        << "entry " << s;
  }
  for (int s : {1, 3}) {
    for (size_t i = 0; i < per_seq; ++i) {
      ASSERT_TRUE(std::isnan(got2[s * per_seq + i])) << "entry " << s << " value " << i;
    }
  }
}

// Prefill through the decode kernel: every query token of a chunk is an
// entry of the same slot with length position + 1 (causal).
TEST(DecodeAttention, PrefillAsOneEntryPerToken) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  std::vector<int32_t> lengths(300);
  std::iota(lengths.begin(), lengths.end(), 601);  // a chunk at positions 600..899
  const Problem p = MakeProblem(rng, Heads{32, 8, 128}, lengths, 3, 1024, /*shared_slot=*/2);
  const std::vector<float> want = Reference(p);
  M40_ASSERT_OK_AND_ASSIGN(const std::vector<float> got, RunGpu(p, Workspace::kFull));
  const double err = m40llm::testing::RelL2(got.data(), want.data(), want.size());
  EXPECT_LE(err, kTolerance);
  std::printf("DecodeAttention prefill as decode: relative L2 %.3g\n", err);
}

TEST(DecodeAttention, WorkspaceSize) {
  // Contexts that are never split need no scratch.
  EXPECT_EQ(DecodeAttentionWorkspaceBytes(8, 32, 128, 256), 0u);
  EXPECT_GT(DecodeAttentionWorkspaceBytes(8, 32, 128, 4096), 0u);
  EXPECT_EQ(DecodeAttentionWorkspaceBytes(0, 32, 128, 4096), 0u);
  // Grows with the batch, bounded in the context (splits are capped).
  EXPECT_EQ(DecodeAttentionWorkspaceBytes(2, 32, 128, 1 << 16),
            2 * DecodeAttentionWorkspaceBytes(1, 32, 128, 1 << 16));
  EXPECT_EQ(DecodeAttentionWorkspaceBytes(1, 32, 128, 1 << 16),
            DecodeAttentionWorkspaceBytes(1, 32, 128, 1 << 20));
}

TEST(DecodeAttention, RejectsBadArguments) {
  const float* q = reinterpret_cast<const float*>(256);
  float* out = reinterpret_cast<float*>(256);
  uint16_t* c = reinterpret_cast<uint16_t*>(256);
  const int32_t* idx = reinterpret_cast<const int32_t*>(256);
  auto call = [&](int n_seq, int n_head, int max_len, int n_head_kv, int head_dim, uint16_t* cache,
                  int ctx) {
    return LaunchDecodeAttention({.q = q,
                                  .n_seq = n_seq,
                                  .n_head = n_head,
                                  .slots = idx,
                                  .lengths = idx,
                                  .max_len = max_len,
                                  .cache = {.k = cache,
                                            .v = cache,
                                            .max_slots = 4,
                                            .n_head_kv = n_head_kv,
                                            .ctx_per_slot = ctx,
                                            .head_dim = head_dim},
                                  .out = out},
                                 nullptr)
        .code();
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(call(-1, 8, 1, 8, 64, c, 16), kInvalid);
  EXPECT_EQ(call(1, 8, 1, 3, 64, c, 16), kInvalid);   // n_head not a multiple of n_head_kv
  EXPECT_EQ(call(1, 8, 1, 8, 60, c, 16), kInvalid);   // head_dim not a multiple of 8
  EXPECT_EQ(call(1, 8, 1, 8, 264, c, 16), kInvalid);  // head_dim > 256
  EXPECT_EQ(call(1, 8, 0, 8, 64, c, 16), kInvalid);   // max_len < 1
  EXPECT_EQ(call(1, 8, 17, 8, 64, c, 16), kInvalid);  // max_len > ctx_per_slot
  EXPECT_EQ(call(70000, 8, 1, 8, 64, c, 16), kInvalid);
  EXPECT_EQ(call(1, 8, 1, 8, 64, c + 1, 16), kInvalid);  // misaligned cache
  EXPECT_EQ(call(1, 8, 1, 8, 64, nullptr, 16), kInvalid);
  EXPECT_TRUE(LaunchDecodeAttention(
                  {.n_head = 8,
                   .cache = {.max_slots = 4, .n_head_kv = 8, .ctx_per_slot = 16, .head_dim = 64}},
                  nullptr)
                  .ok());
}

// Q read inside wider rows (a fused QKV row) gives the same bits as packed Q.
TEST(DecodeAttention, QRowStrideMatchesPackedQ) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const Heads h{8, 2, 64};
  const Problem p = MakeProblem(rng, h, {300, 5, 1000}, 4, 1024);
  M40_ASSERT_OK_AND_ASSIGN(auto want, RunGpu(p, Workspace::kFull));
  const int64_t row = static_cast<int64_t>(h.n_head) * h.head_dim;
  const int64_t stride = row + 2 * 2 * 64;  // room for K and V after Q
  std::vector<float> wide(static_cast<size_t>(p.n_seq() * stride), NAN);
  for (int s = 0; s < p.n_seq(); ++s) {
    std::copy(p.q.begin() + s * row, p.q.begin() + (s + 1) * row, wide.begin() + s * stride);
  }
  M40_ASSERT_OK_AND_ASSIGN(auto d_q, ToDevice(wide));
  M40_ASSERT_OK_AND_ASSIGN(auto d_slots, ToDevice(p.slots));
  M40_ASSERT_OK_AND_ASSIGN(auto d_len, ToDevice(p.lengths));
  M40_ASSERT_OK_AND_ASSIGN(auto d_k, ToDevice(p.k));
  M40_ASSERT_OK_AND_ASSIGN(auto d_v, ToDevice(p.v));
  M40_ASSERT_OK_AND_ASSIGN(auto d_out, PoisonedFloats(p.q.size()));
  const size_t ws_bytes =
      DecodeAttentionWorkspaceBytes(p.n_seq(), h.n_head, h.head_dim, p.ctx_per_slot);
  M40_ASSERT_OK_AND_ASSIGN(auto d_ws, gpu::DeviceBuffer<uint8_t>::Allocate(ws_bytes));
  DecodeAttentionArgs args{.q = d_q.get(),
                           .n_seq = p.n_seq(),
                           .n_head = h.n_head,
                           .slots = d_slots.get(),
                           .lengths = d_len.get(),
                           .max_len = 1000,
                           .cache = {.k = d_k.get(),
                                     .v = d_v.get(),
                                     .max_slots = p.max_slots,
                                     .n_head_kv = h.n_head_kv,
                                     .ctx_per_slot = p.ctx_per_slot,
                                     .head_dim = h.head_dim},
                           .workspace = d_ws.get(),
                           .workspace_bytes = ws_bytes,
                           .out = d_out.get(),
                           .fixed_split_len = 0,
                           .q_row_stride = stride};
  M40_ASSERT_OK(LaunchDecodeAttention(args, nullptr));
  M40_ASSERT_OK_AND_ASSIGN(auto got, ToHost(d_out));
  EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0);
  args.q_row_stride = row - 1;
  EXPECT_EQ(LaunchDecodeAttention(args, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

TEST(DecodeAttention, FixedSplitsAreBatchInvariant) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const Heads h{8, 2, 64};
  const int ctx = 4096;
  const int split = DecodeAttentionFixedSplitLen(ctx);
  EXPECT_EQ(split % 128, 0);
  EXPECT_LE((ctx + split - 1) / split, 32);
  // Sequence 0 (1500 positions, several splits) alone, then with neighbours
  // that change n_seq and max_len: its output bits must not change, and the
  // batch must still match the reference.
  const Problem batch = MakeProblem(rng, h, {1500, 3000, 7, 700}, 6, ctx);
  Problem alone = batch;
  alone.slots.resize(1);
  alone.lengths.resize(1);
  alone.q.resize(static_cast<size_t>(h.n_head) * h.head_dim);
  M40_ASSERT_OK_AND_ASSIGN(auto one, RunGpu(alone, Workspace::kFull, 0, split));
  M40_ASSERT_OK_AND_ASSIGN(auto all, RunGpu(batch, Workspace::kFull, 0, split));
  ASSERT_GE(all.size(), one.size());
  EXPECT_EQ(std::memcmp(one.data(), all.data(), one.size() * sizeof(float)), 0)
      << "sequence 0 changed with its batch";
  const std::vector<float> want = Reference(batch);
  EXPECT_LE(m40llm::testing::RelL2(all.data(), want.data(), want.size()), kTolerance);
  // Too short a split for the context is refused, not truncated.
  EXPECT_EQ(RunGpu(batch, Workspace::kFull, 0, 64).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace m40llm::gpu
