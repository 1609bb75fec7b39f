// Causal prefill attention vs a plain double-precision reference (scores
// q.k / sqrt(head_dim), softmax, probability-weighted V, K and V widened from
// FP16 exactly) on fresh random queries and caches: MHA, GQA (groups 2, 3, 7,
// 8), MQA (groups 8, 32, 128: more heads than one block's rows), head_dim 8,
// 40, 64, 80, 128, 256; chunks at position 0 and mid-context (earlier
// positions filled by "earlier calls"); several chunks of different slots and
// lengths (1, 7, 64, 300 tokens) in one call, in scattered output rows with
// unnamed rows between them; invalid chunks (bad slot, position, length,
// context) giving NaN without touching the others; agreement with
// LaunchDecodeAttention run one entry per query token; argument errors.
// Every cache cell a chunk must not read (other slots, positions at or past
// pos + len) holds NaN, and the output is poisoned with NaN before each call,
// so a leak or a missed row shows.
// Tolerance: relative L2 <= 1e-5 per case against the double reference (FP32
// dot products, exp2 of pre-scaled scores, sums in another order), and 1e-5
// against the decode kernel (both FP32).
#include "cuda/attention_prefill.cuh"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "cuda/attention.cuh"
#include "engine/fp16.h"
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

struct Chunk {
  int32_t slot;
  int32_t pos;
  int32_t len;
  int32_t row = -1;  // output row of the first token; -1: assigned by MakeProblem
};

// One layer's cache with random K/V in positions [0, pos + len) of every
// chunk's slot and NaN everywhere else, and random queries for n_tok rows
// (rows no chunk names are random too, and must stay untouched).
struct Problem {
  Heads h;
  int max_slots = 0;
  int ctx_per_slot = 0;
  int64_t n_tok = 0;
  std::vector<Chunk> chunks;
  std::vector<float> q;        // (n_tok, n_head, head_dim)
  std::vector<uint16_t> k, v;  // (max_slots, n_head_kv, ctx_per_slot, head_dim)

  size_t Index(int slot, int kv_head, int pos) const {
    return ((static_cast<size_t>(slot) * h.n_head_kv + kv_head) * ctx_per_slot + pos) * h.head_dim;
  }
  size_t RowFloats() const { return static_cast<size_t>(h.n_head) * h.head_dim; }
  int MaxChunkLen() const {
    int m = 0;
    for (const Chunk& c : chunks) m = std::max(m, c.len);
    return m;
  }
};

// Chunks take output rows in a shuffled order with one unnamed row before
// each (so the kernel must honour chunk_row, and leave unnamed rows alone).
Problem MakeProblem(std::mt19937& rng, const Heads& h, std::vector<Chunk> chunks, int max_slots,
                    int ctx_per_slot) {
  Problem p;
  p.h = h;
  p.max_slots = max_slots;
  p.ctx_per_slot = ctx_per_slot;
  std::vector<int> order(chunks.size());
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  int64_t next_row = 0;
  for (int c : order) {
    ++next_row;  // an unnamed row
    if (chunks[c].row < 0) chunks[c].row = static_cast<int32_t>(next_row);
    next_row = std::max<int64_t>(next_row, chunks[c].row + int64_t{chunks[c].len});
  }
  p.n_tok = next_row + 1;
  p.chunks = std::move(chunks);
  p.q = RandomFloats(rng, static_cast<size_t>(p.n_tok) * p.RowFloats(), -2.0f, 2.0f);
  const size_t cache_size = p.Index(max_slots, 0, 0);
  p.k.assign(cache_size, kHalfNaN);
  p.v.assign(cache_size, kHalfNaN);
  std::vector<int32_t> fill(max_slots, 0);
  for (const Chunk& c : p.chunks) {
    if (c.slot >= 0 && c.slot < max_slots && c.pos >= 0 && c.len >= 0) {
      fill[c.slot] = std::max(fill[c.slot], std::min(c.pos + c.len, ctx_per_slot));
    }
  }
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

// Plain double-precision causal attention for the tokens of chunk c:
// (len, n_head, head_dim) values.
std::vector<double> ReferenceChunk(const Problem& p, const Chunk& c) {
  const int hd = p.h.head_dim;
  const int group = p.h.n_head / p.h.n_head_kv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  std::vector<double> out(static_cast<size_t>(c.len) * p.RowFloats(), 0.0);
  std::vector<double> kf(static_cast<size_t>(c.pos + c.len) * hd);
  std::vector<double> vf(kf.size());
  std::vector<double> score(c.pos + c.len);
  for (int g = 0; g < p.h.n_head_kv; ++g) {
    const size_t base = p.Index(c.slot, g, 0);
    for (size_t i = 0; i < kf.size(); ++i) {
      kf[i] = HalfToFloat(p.k[base + i]);
      vf[i] = HalfToFloat(p.v[base + i]);
    }
    for (int t = 0; t < c.len; ++t) {
      const int n_keys = c.pos + t + 1;
      for (int head = g * group; head < (g + 1) * group; ++head) {
        const float* qh = &p.q[(static_cast<size_t>(c.row + t) * p.h.n_head + head) * hd];
        double mx = -INFINITY;
        for (int j = 0; j < n_keys; ++j) {
          double s = 0;
          for (int d = 0; d < hd; ++d) s += static_cast<double>(qh[d]) * kf[j * hd + d];
          score[j] = s * scale;
          mx = std::max(mx, score[j]);
        }
        double sum = 0;
        for (int j = 0; j < n_keys; ++j) {
          score[j] = std::exp(score[j] - mx);
          sum += score[j];
        }
        double* o = &out[(static_cast<size_t>(t) * p.h.n_head + head) * hd];
        for (int j = 0; j < n_keys; ++j) {
          const double w = score[j] / sum;
          for (int d = 0; d < hd; ++d) o[d] += w * vf[j * hd + d];
        }
      }
    }
  }
  return out;
}

double RelL2(const float* got, const double* want, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = got[i] - want[i];
    num += d * d;
    den += want[i] * want[i];
  }
  if (!std::isfinite(num)) return INFINITY;
  return den == 0 ? (num == 0 ? 0 : INFINITY) : std::sqrt(num / den);
}

struct GpuCall {
  int max_chunk_len = -1;  // -1: the longest chunk
  int max_context = -1;    // -1: ctx_per_slot
};

// The GPU result for `p`, out poisoned with NaN (all bits set) first.
absl::StatusOr<std::vector<float>> RunGpu(const Problem& p, GpuCall call = {}) {
  std::vector<int32_t> slot, pos, len, row;
  for (const Chunk& c : p.chunks) {
    slot.push_back(c.slot);
    pos.push_back(c.pos);
    len.push_back(c.len);
    row.push_back(c.row);
  }
  if (call.max_chunk_len < 0) call.max_chunk_len = p.MaxChunkLen();
  if (call.max_context < 0) call.max_context = p.ctx_per_slot;
  ASSIGN_OR_RETURN(auto d_q, ToDevice(p.q));
  ASSIGN_OR_RETURN(auto d_slot, ToDevice(slot));
  ASSIGN_OR_RETURN(auto d_pos, ToDevice(pos));
  ASSIGN_OR_RETURN(auto d_len, ToDevice(len));
  ASSIGN_OR_RETURN(auto d_row, ToDevice(row));
  ASSIGN_OR_RETURN(auto d_k, ToDevice(p.k));
  ASSIGN_OR_RETURN(auto d_v, ToDevice(p.v));
  ASSIGN_OR_RETURN(auto d_out, PoisonedFloats(p.q.size()));
  RETURN_IF_ERROR(LaunchPrefillAttention({.q = d_q.get(),
                                          .n_tok = p.n_tok,
                                          .n_head = p.h.n_head,
                                          .chunk_slot = d_slot.get(),
                                          .chunk_pos = d_pos.get(),
                                          .chunk_len = d_len.get(),
                                          .chunk_row = d_row.get(),
                                          .n_chunks = static_cast<int>(p.chunks.size()),
                                          .max_chunk_len = call.max_chunk_len,
                                          .max_context = call.max_context,
                                          .cache = {.k = d_k.get(),
                                                    .v = d_v.get(),
                                                    .max_slots = p.max_slots,
                                                    .n_head_kv = p.h.n_head_kv,
                                                    .ctx_per_slot = p.ctx_per_slot,
                                                    .head_dim = p.h.head_dim},
                                          .out = d_out.get()},
                                         nullptr));
  CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  return ToHost(d_out);
}

bool IsPoison(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits == 0xffffffffu;
}

// Rows no chunk names must still hold the poison.
void ExpectUnnamedRowsUntouched(const Problem& p, const std::vector<float>& got) {
  std::vector<bool> named(p.n_tok, false);
  for (const Chunk& c : p.chunks) {
    if (c.row < 0 || c.len < 0 || c.row + int64_t{c.len} > p.n_tok) continue;
    for (int t = 0; t < c.len; ++t) named[c.row + t] = true;
  }
  for (int64_t r = 0; r < p.n_tok; ++r) {
    if (named[r]) continue;
    for (size_t i = 0; i < p.RowFloats(); ++i) {
      ASSERT_TRUE(IsPoison(got[r * p.RowFloats() + i])) << "unnamed row " << r << " written";
    }
  }
}

double ChunkError(const Problem& p, const Chunk& c, const std::vector<float>& got) {
  const std::vector<double> want = ReferenceChunk(p, c);
  return RelL2(&got[static_cast<size_t>(c.row) * p.RowFloats()], want.data(), want.size());
}

struct Stats {
  double worst = 0;
  int cases = 0;
};

std::string Describe(const Heads& h, const std::vector<Chunk>& chunks) {
  ::testing::Message m;
  m << "n_head " << h.n_head << " n_head_kv " << h.n_head_kv << " head_dim " << h.head_dim
    << " chunks (slot,pos,len)";
  for (const Chunk& c : chunks) m << " (" << c.slot << "," << c.pos << "," << c.len << ")";
  return m.GetString();
}

// Runs the chunks (all valid) and checks every chunk against the reference.
void CheckCase(std::mt19937& rng, const Heads& h, const std::vector<Chunk>& chunks, int max_slots,
               int ctx_per_slot, Stats* stats) {
  SCOPED_TRACE(Describe(h, chunks));
  const Problem p = MakeProblem(rng, h, chunks, max_slots, ctx_per_slot);
  M40_ASSERT_OK_AND_ASSIGN(const std::vector<float> got, RunGpu(p));
  for (const Chunk& c : p.chunks) {
    const double err = ChunkError(p, c, got);
    EXPECT_LE(err, kTolerance) << "chunk at slot " << c.slot << " pos " << c.pos;
    stats->worst = std::max(stats->worst, err);
  }
  ExpectUnnamedRowsUntouched(p, got);
  ++stats->cases;
}

TEST(PrefillAttention, HeadShapesMatchReference) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const Heads heads[] = {
      {8, 8, 64},     // MHA
      {32, 4, 64},    // GQA group 8 (TinyLlama)
      {16, 16, 128},  // MHA, head_dim 128 (Llama 2 7B heads)
      {28, 4, 128},   // GQA group 7: a block's rows are 9 tokens x 7 heads, one padding row
      {12, 4, 80},    // GQA group 3, head_dim 80 (padded to 128)
      {8, 1, 128},    // MQA group 8
      {128, 1, 64},   // MQA group 128: two head tiles of 64 per kv head
      {6, 3, 40},     // GQA group 2, head_dim 40 (padded to 64)
      {4, 2, 8},      // head_dim 8 (padded to 32)
      {4, 2, 256},    // the largest head_dim
      {32, 1, 256},   // MQA with head_dim 256: two head tiles of 16
  };
  Stats stats;
  for (const Heads& h : heads) {
    // A prompt from position 0, then a chunk in the middle of a context.
    CheckCase(rng, h, {{1, 0, 100}}, 3, 160, &stats);
    CheckCase(rng, h, {{0, 300, 77}}, 2, 400, &stats);
  }
  std::printf("PrefillAttention shapes: worst relative L2 %.3g over %d cases (tolerance %.0e)\n",
              stats.worst, stats.cases, kTolerance);
}

// Chunks of 1, 7, 64 and 300 tokens of different slots at different
// positions in one call, out of row order; and tile edges (lengths one off
// the tile sizes) at positions that are not multiples of the key tile.
TEST(PrefillAttention, MixedChunksInOneCall) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const std::vector<Chunk> mixed = {{3, 900, 1}, {0, 0, 7}, {5, 200, 64}, {2, 37, 300}};
  const std::vector<Chunk> edges = {{1, 0, 63}, {4, 15, 65}, {0, 31, 33}, {2, 1, 2}, {3, 0, 1}};
  Stats stats;
  for (const Heads& h : {Heads{32, 4, 64}, Heads{32, 32, 128}, Heads{8, 1, 128}, Heads{6, 2, 40},
                         Heads{8, 2, 256}}) {
    CheckCase(rng, h, mixed, 6, 1024, &stats);
    CheckCase(rng, h, edges, 5, 128, &stats);
  }
  std::printf("PrefillAttention mixed chunks: worst relative L2 %.3g over %d cases\n", stats.worst,
              stats.cases);
}

// Unreadable chunks get NaN rows; the valid chunks of the same call are
// exact and unnamed rows stay untouched; nothing outside the valid cells is
// read (the NaN cache cells would show, and memcheck runs this test too).
TEST(PrefillAttention, InvalidChunksGiveNaNAndLeaveOthersAlone) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const Heads h{8, 2, 64};
  const int max_slots = 4, ctx = 256;
  Problem p = MakeProblem(
      rng, h,
      {{0, 10, 20}, {1, 0, 40}, {2, 100, 30}, {3, 50, 9}, {1, 40, 5}, {2, 0, 12}, {0, 0, 3}},
      max_slots, ctx);
  p.chunks[1].slot = max_slots;  // slot out of range
  p.chunks[2].pos = ctx - 10;    // pos + len past ctx_per_slot
  p.chunks[4].pos = -1;          // negative position
  p.chunks[5].slot = -7;         // negative slot
  // Chunk 3 ends at 59: past max_context 58 below, so it is invalid too.
  M40_ASSERT_OK_AND_ASSIGN(const std::vector<float> got,
                           RunGpu(p, GpuCall{/*max_chunk_len=*/40, /*max_context=*/58}));
  for (int c : {0, 6}) {
    EXPECT_LE(ChunkError(p, p.chunks[c], got), kTolerance) << "chunk " << c;
  }
  for (int c : {1, 2, 3, 4, 5}) {
    const Chunk& ch = p.chunks[c];
    for (size_t i = 0; i < ch.len * p.RowFloats(); ++i) {
      const float f = got[ch.row * p.RowFloats() + i];
      ASSERT_TRUE(std::isnan(f) && !IsPoison(f)) << "chunk " << c << " value " << i;
    }
  }
  ExpectUnnamedRowsUntouched(p, got);

  // A chunk longer than max_chunk_len is invalid; one whose rows leave
  // [0, n_tok) names no rows and writes nothing.
  Problem p2 = MakeProblem(rng, h, {{0, 0, 50}, {1, 5, 20}, {2, 0, 10}}, 3, 128);
  // 10 rows from the last (unnamed) row: past n_tok. Its own rows stay
  // unnamed, so they must keep the poison too.
  p2.chunks[2].row = static_cast<int32_t>(p2.n_tok) - 1;
  M40_ASSERT_OK_AND_ASSIGN(const std::vector<float> got2,
                           RunGpu(p2, GpuCall{/*max_chunk_len=*/20}));
  for (size_t i = 0; i < 50 * p2.RowFloats(); ++i) {
    const float f = got2[p2.chunks[0].row * p2.RowFloats() + i];
    ASSERT_TRUE(std::isnan(f) && !IsPoison(f)) << "long chunk value " << i;
  }
  EXPECT_LE(ChunkError(p2, p2.chunks[1], got2), kTolerance);
  ExpectUnnamedRowsUntouched(p2, got2);
}

// The same causal attention through LaunchDecodeAttention, one entry per
// query token (slot, length pos + i + 1): the current fallback.
TEST(PrefillAttention, AgreesWithDecodeOneEntryPerToken) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  for (const Heads& h : {Heads{32, 4, 64}, Heads{32, 32, 128}, Heads{12, 4, 80}}) {
    SCOPED_TRACE(Describe(h, {}));
    const Problem p = MakeProblem(rng, h, {{1, 0, 300}, {0, 700, 64}, {2, 5, 7}}, 3, 1024);
    M40_ASSERT_OK_AND_ASSIGN(const std::vector<float> got, RunGpu(p));

    // Decode entries: one per named row, in row order.
    std::vector<int32_t> slots, lengths;
    std::vector<int64_t> rows;
    for (const Chunk& c : p.chunks) {
      for (int t = 0; t < c.len; ++t) {
        slots.push_back(c.slot);
        lengths.push_back(c.pos + t + 1);
        rows.push_back(c.row + t);
      }
    }
    const int n_seq = static_cast<int>(slots.size());
    std::vector<float> q_seq(static_cast<size_t>(n_seq) * p.RowFloats());
    for (int s = 0; s < n_seq; ++s) {
      std::copy_n(&p.q[rows[s] * p.RowFloats()], p.RowFloats(), &q_seq[s * p.RowFloats()]);
    }
    M40_ASSERT_OK_AND_ASSIGN(auto d_q, ToDevice(q_seq));
    M40_ASSERT_OK_AND_ASSIGN(auto d_slots, ToDevice(slots));
    M40_ASSERT_OK_AND_ASSIGN(auto d_len, ToDevice(lengths));
    M40_ASSERT_OK_AND_ASSIGN(auto d_k, ToDevice(p.k));
    M40_ASSERT_OK_AND_ASSIGN(auto d_v, ToDevice(p.v));
    M40_ASSERT_OK_AND_ASSIGN(auto d_out, PoisonedFloats(q_seq.size()));
    const size_t ws_bytes =
        DecodeAttentionWorkspaceBytes(n_seq, h.n_head, h.head_dim, p.ctx_per_slot);
    M40_ASSERT_OK_AND_ASSIGN(auto d_ws, DeviceBuffer<uint8_t>::Allocate(ws_bytes));
    const int max_len = *std::max_element(lengths.begin(), lengths.end());
    M40_ASSERT_OK(LaunchDecodeAttention({.q = d_q.get(),
                                         .n_seq = n_seq,
                                         .n_head = h.n_head,
                                         .slots = d_slots.get(),
                                         .lengths = d_len.get(),
                                         .max_len = max_len,
                                         .cache = {.k = d_k.get(),
                                                   .v = d_v.get(),
                                                   .max_slots = p.max_slots,
                                                   .n_head_kv = h.n_head_kv,
                                                   .ctx_per_slot = p.ctx_per_slot,
                                                   .head_dim = h.head_dim},
                                         .workspace = d_ws.get(),
                                         .workspace_bytes = ws_bytes,
                                         .out = d_out.get()},
                                        nullptr));
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    M40_ASSERT_OK_AND_ASSIGN(const std::vector<float> dec, ToHost(d_out));
    std::vector<float> mine(dec.size());
    for (int s = 0; s < n_seq; ++s) {
      std::copy_n(&got[rows[s] * p.RowFloats()], p.RowFloats(), &mine[s * p.RowFloats()]);
    }
    const double err = m40llm::testing::RelL2(mine.data(), dec.data(), dec.size());
    EXPECT_LE(err, kTolerance);
    std::printf("PrefillAttention vs decode one entry per token (%d/%d/%d): relative L2 %.3g\n",
                h.n_head, h.n_head_kv, h.head_dim, err);
  }
}

TEST(PrefillAttention, RejectsBadArguments) {
  const float* q = reinterpret_cast<const float*>(256);
  float* out = reinterpret_cast<float*>(256);
  uint16_t* c = reinterpret_cast<uint16_t*>(256);
  const int32_t* idx = reinterpret_cast<const int32_t*>(256);
  struct Call {
    int64_t n_tok = 16;
    int n_head = 8, n_head_kv = 8, head_dim = 64;
    int n_chunks = 1, max_chunk_len = 16, max_context = 32;
    const float* q = nullptr;
    uint16_t* cache = nullptr;
    float* out = nullptr;
    int max_slots = 4, ctx = 32;
  };
  auto run = [&](Call a) {
    if (a.q == nullptr) a.q = q;
    if (a.cache == nullptr) a.cache = c;
    if (a.out == nullptr) a.out = out;
    return LaunchPrefillAttention({.q = a.q,
                                   .n_tok = a.n_tok,
                                   .n_head = a.n_head,
                                   .chunk_slot = idx,
                                   .chunk_pos = idx,
                                   .chunk_len = idx,
                                   .chunk_row = idx,
                                   .n_chunks = a.n_chunks,
                                   .max_chunk_len = a.max_chunk_len,
                                   .max_context = a.max_context,
                                   .cache = {.k = a.cache,
                                             .v = a.cache,
                                             .max_slots = a.max_slots,
                                             .n_head_kv = a.n_head_kv,
                                             .ctx_per_slot = a.ctx,
                                             .head_dim = a.head_dim},
                                   .out = a.out},
                                  nullptr)
        .code();
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  auto with = [](auto edit) {
    Call a;
    edit(a);
    return a;
  };
  EXPECT_EQ(run(with([](Call& a) { a.n_tok = -1; })), kInvalid);
  EXPECT_EQ(run(with([](Call& a) { a.n_chunks = -1; })), kInvalid);
  EXPECT_EQ(run(with([](Call& a) { a.n_chunks = 70000; })), kInvalid);
  EXPECT_EQ(run(with([](Call& a) { a.n_head_kv = 3; })), kInvalid);  // 8 % 3 != 0
  EXPECT_EQ(run(with([](Call& a) { a.n_head = 0; })), kInvalid);
  EXPECT_EQ(run(with([](Call& a) { a.head_dim = 60; })), kInvalid);   // not a multiple of 8
  EXPECT_EQ(run(with([](Call& a) { a.head_dim = 264; })), kInvalid);  // > 256
  EXPECT_EQ(run(with([](Call& a) { a.head_dim = 0; })), kInvalid);
  EXPECT_EQ(run(with([](Call& a) { a.max_slots = 0; })), kInvalid);
  EXPECT_EQ(run(with([](Call& a) { a.ctx = 0; })), kInvalid);
  EXPECT_EQ(run(with([](Call& a) { a.max_chunk_len = -1; })), kInvalid);
  EXPECT_EQ(run(with([](Call& a) { a.max_chunk_len = 17; })), kInvalid);  // > n_tok
  EXPECT_EQ(run(with([](Call& a) { a.max_context = 0; })), kInvalid);
  EXPECT_EQ(run(with([](Call& a) { a.max_context = 33; })), kInvalid);  // > ctx_per_slot
  EXPECT_EQ(run(with([&](Call& a) { a.cache = c + 1; })), kInvalid);    // misaligned
  EXPECT_EQ(run(with([&](Call& a) { a.q = q + 1; })), kInvalid);
  EXPECT_EQ(run(with([&](Call& a) { a.out = out + 2; })), kInvalid);
  // Null caches.
  EXPECT_EQ(LaunchPrefillAttention(
                {.q = q,
                 .n_tok = 16,
                 .n_head = 8,
                 .chunk_slot = idx,
                 .chunk_pos = idx,
                 .chunk_len = idx,
                 .chunk_row = idx,
                 .n_chunks = 1,
                 .max_chunk_len = 16,
                 .max_context = 32,
                 .cache = {.max_slots = 4, .n_head_kv = 8, .ctx_per_slot = 32, .head_dim = 64},
                 .out = out},
                nullptr)
                .code(),
            kInvalid);
  // Nothing to do: no chunks, or no rows.
  const PrefillAttentionArgs shape{
      .n_head = 8,
      .max_context = 32,
      .cache = {.max_slots = 4, .n_head_kv = 8, .ctx_per_slot = 32, .head_dim = 64}};
  PrefillAttentionArgs no_chunks = shape;
  no_chunks.n_tok = 16;
  EXPECT_TRUE(LaunchPrefillAttention(no_chunks, nullptr).ok());
  PrefillAttentionArgs no_rows = shape;
  no_rows.n_chunks = 3;
  EXPECT_TRUE(LaunchPrefillAttention(no_rows, nullptr).ok());
}

}  // namespace
}  // namespace m40llm::gpu
