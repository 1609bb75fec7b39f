// Device side of token sampling: what one block of the sampling kernel does
// for its sequence, as a __device__ function that the standalone kernel
// (sampling.cu) and the persistent decode kernel both call; the semantics are
// those of engine/sampler.h, step by step. Included only by .cu files (see
// cuda/README.md, "Device functions"); C++17 and sm_52 features only.
//
//
// One block of kBlock threads per sequence, working on its logits row in
// place (n_vocab may be 256k, so nothing row-sized lives in shared memory):
//
//  1. Raw pass: NaN -> -inf (written back), raw max and min.
//  2. Top n_logprobs of the raw logits: a selection (below) of the first
//     n_top tokens of the sorted order, before the penalties touch the row.
//  3. Penalties over the window: per-token counts in the workspace (global
//     atomics), one claiming thread per distinct token applies the CTRL,
//     presence and frequency terms and saves the raw value for step 6.
//  4. Second pass: the raw log-sum-exp (corrected for the penalised tokens),
//     and the max of the penalised row as a (logit, id) key, which is also
//     the greedy token.
//  5. Temperature > 0: top-k / min-p / top-p and the draw, each found by a
//     selection on the penalised row; the last small set is sorted in shared
//     memory and walked there.
//  6. Raw log-probabilities of the chosen and the top tokens.
//
// The sorted order as keys. A token's key is its logit mapped to a uint32
// that orders like the float (-0 folded into +0, which compares equal), above
// 24 bits of (kIdMask - id): keys are distinct and the sorted order (logit
// descending, ties to the lower id) is key descending. A prefix of the sorted
// order is {key >= the key of its last token}, so a truncation is one key.
//
// Selection. "The first position where the running count (top-k, min-p) or
// running weight (top-p, the draw) reaches x" is found by a radix descent:
// histogram the candidates into 256 bins that are contiguous, ordered key
// ranges; one warp scans the bins in order to find the one where the level is
// reached; recurse into that bin. The first level bins by distance below the
// max logit ((l_max - l) scaled onto 254 bins, the max alone in bin 0), which
// spreads typical logits; deeper levels take the 8 key bits below the highest
// bit in which the bin's smallest and largest keys differ. A bin of more than
// kSmallCap candidates is compacted (ids) into the workspace for the next
// level; a smaller one goes to shared memory, is sorted (bitonic) and walked.
// At the first level, when the whole prefix up to and including the crossing
// bin fits, all of it is gathered, so a small top-k or top-p set ends sorted
// in shared memory ready for the next steps.
//
// Weights and sums. w = (l == l_max) ? 1 : expf((l - l_max) / T) as on the
// host (the device's expf is within 2 ulp of the host's). Sums are exact
// integer sums of round(w * 2^42) in 64 bits (histogram bins add a low and a
// high 32-bit word with the carry of the low one), so they do not depend on
// the order in which threads add, and a prefix's sum is the same however the
// search reaches it. Quantisation costs at most n_vocab * 2^-43 of weight
// (against W >= 1, the top token's own weight), far below the ulp-level
// difference of expf. The raw log-sum-exp uses the same fixed point.
#pragma once

#if !defined(__CUDACC__)
#error "cuda/sampling_device.cuh is for CUDA sources only"
#endif

#include <cmath>
#include <cstdint>

#include "cuda/kernel_util.h"
#include "cuda/sampling.cuh"
#include "engine/philox.h"

namespace m40llm::gpu::sampling {

using internal::kWarpSize;

inline constexpr int kBlock = 512;  // threads per sequence
inline constexpr int kWarps = kBlock / kWarpSize;
inline constexpr int kUnroll = 4;                      // scalar row loads in flight per thread
inline constexpr int kVecUnroll = 4;                   // float4 row loads in flight per thread
inline constexpr int kBins = 256;                      // radix bins per level
inline constexpr int kSmallCap = 4096;                 // keys sorted in shared memory
inline constexpr int kPerThread = kSmallCap / kBlock;  // sorted positions per thread
inline constexpr int kIdBits = 24;
inline constexpr uint32_t kIdMask = (1u << kIdBits) - 1;
inline constexpr unsigned kFullMask = 0xffffffffu;
inline constexpr double kFixedScale = 4398046511104.0;  // 2^42: weight fixed point
static_assert(kSampleMaxVocab <= (1 << kIdBits), "ids must fit the key's id bits");
static_assert(kBins == 8 * kWarpSize, "FindCrossing gives each lane of one warp 8 bins");
static_assert(kSmallCap % kBlock == 0, "sorted positions split evenly over threads");

// Everything the block shares, in shared memory (the caller declares it):
// 32 KB of keys, 3 KB of histograms and a few scalars (under Maxwell's 48 KB
// of static shared memory per block).
struct SampleShared {
  uint64_t keys[kSmallCap];  // candidate keys, sorted descending after SortKeys
  uint32_t cnt[kBins];       // histogram: candidates per bin
  uint32_t lo[kBins];        // histogram: low 32 bits of the bin's fixed-point weight
  uint32_t hi[kBins];        // histogram: high 32 bits (carries included)
  uint64_t red[kWarps];      // block reductions and scans
  float red_f[kWarps];
  uint64_t top_keys[kMaxEventLogprobs];  // keys of the top raw logits
  uint32_t cursor;                       // append position for gathers and compactions
  // The crossing bin FindCrossing picked.
  int pick_found;
  int pick_bin;
  uint32_t pick_bin_count;
  uint32_t pick_count_before;  // candidates in earlier bins (plus earlier levels)
  uint64_t pick_weight_before;
  uint32_t pick_total_count;  // when not found: all candidates
  uint64_t pick_total_weight;
  uint64_t cum_at;  // a prefix sum one thread publishes
  int flag;
};

// ---------------------------------------------------------------------------
// Keys, weights, fixed point.

__device__ __forceinline__ uint32_t OrderedBits(float x) {  // x not NaN
  uint32_t b = __float_as_uint(x);
  if (b == 0x80000000u) b = 0;  // -0 == +0: one key, ordered by id
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float OrderedValue(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}
// Nonzero for every token (the smallest value, -inf, maps above 0), so 0
// pads a sort and "key >= 0" admits everything.
__device__ __forceinline__ uint64_t MakeKey(float l, int id) {
  return (static_cast<uint64_t>(OrderedBits(l)) << kIdBits) | (kIdMask - static_cast<uint32_t>(id));
}
__device__ __forceinline__ int KeyId(uint64_t k) {
  return static_cast<int>(kIdMask - static_cast<uint32_t>(k & kIdMask));
}
__device__ __forceinline__ float KeyLogit(uint64_t k) {
  return OrderedValue(static_cast<uint32_t>(k >> kIdBits));
}

// round(w * 2^42) for w in [0, 1], without a 64-bit conversion: w * 2^10
// splits exactly into an integer part (<= 1024) and a fraction whose
// 2^32-scaled value rounds to at most 2^32 - 256. Deterministic for any
// input (NaN -> 0, huge values saturate), which the raw-sum correction needs.
__device__ __forceinline__ uint64_t ToFixed(float w) {
  const float f = w * 1024.0f;
  const float whole = floorf(f);
  const uint32_t frac = __float2uint_rn((f - whole) * 4294967296.0f);
  return (static_cast<uint64_t>(__float2uint_rz(whole)) << 32) | frac;
}

// The sampling weight of penalised logit l, as the host computes it (IEEE
// subtract and divide, expf). The clamp changes nothing for valid params.
__device__ __forceinline__ float Weight(float l, float lmax, float temperature) {
  if (l == lmax) return 1.0f;
  return fminf(expf(__fdiv_rn(__fsub_rn(l, lmax), temperature)), 1.0f);
}

// exp(x - raw_max) of the raw log-sum-exp, in fixed point.
__device__ __forceinline__ uint64_t RawTerm(float x, float raw_max) {
  return ToFixed(x == raw_max ? 1.0f : expf(__fsub_rn(x, raw_max)));
}

// ---------------------------------------------------------------------------
// Warp and block helpers. Block-level ones contain __syncthreads(): every
// thread calls them.

__device__ __forceinline__ int Lane() { return static_cast<int>(threadIdx.x) & (kWarpSize - 1); }
__device__ __forceinline__ int WarpIndex() { return static_cast<int>(threadIdx.x) / kWarpSize; }

__device__ __forceinline__ uint64_t WarpSumU64(uint64_t v) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o /= 2) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

enum class Op { kSum, kMin, kMax };

template <Op kOp>
__device__ __forceinline__ uint64_t Combine(uint64_t a, uint64_t b) {
  if constexpr (kOp == Op::kSum) return a + b;
  if constexpr (kOp == Op::kMin) return a < b ? a : b;
  return a > b ? a : b;
}

template <Op kOp>
__device__ __forceinline__ uint64_t BlockReduceU64(SampleShared& sm, uint64_t v) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o /= 2) {
    v = Combine<kOp>(v, __shfl_xor_sync(kFullMask, v, o));
  }
  if (Lane() == 0) sm.red[WarpIndex()] = v;
  __syncthreads();
  uint64_t r = sm.red[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) r = Combine<kOp>(r, sm.red[w]);
  __syncthreads();  // sm.red is reused by the next reduction
  return r;
}

template <bool kMax>
__device__ __forceinline__ float BlockMinMaxF(SampleShared& sm, float v) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o /= 2) {
    const float u = __shfl_xor_sync(kFullMask, v, o);
    v = kMax ? fmaxf(v, u) : fminf(v, u);
  }
  if (Lane() == 0) sm.red_f[WarpIndex()] = v;
  __syncthreads();
  float r = sm.red_f[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) r = kMax ? fmaxf(r, sm.red_f[w]) : fminf(r, sm.red_f[w]);
  __syncthreads();
  return r;
}

// Exclusive prefix sum over the block in thread order; *total gets the sum.
__device__ __forceinline__ uint64_t BlockExclusiveScanU64(SampleShared& sm, uint64_t v,
                                                          uint64_t* total) {
  const int lane = Lane();
  uint64_t inc = v;
#pragma unroll
  for (int o = 1; o < kWarpSize; o *= 2) {
    const uint64_t y = __shfl_up_sync(kFullMask, inc, o);
    if (lane >= o) inc += y;
  }
  if (lane == kWarpSize - 1) sm.red[WarpIndex()] = inc;
  __syncthreads();
  uint64_t before = 0, all = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    const uint64_t s = sm.red[w];
    if (w < WarpIndex()) before += s;
    all += s;
  }
  __syncthreads();
  *total = all;
  return before + inc - v;
}

// A slot in an append-only list for each lane with `take` set: one shared
// atomic per warp. All lanes of the warp call it.
__device__ __forceinline__ uint32_t AppendSlot(SampleShared& sm, bool take) {
  const unsigned mask = __ballot_sync(kFullMask, take);
  if (mask == 0) return 0;
  const int leader = __ffs(mask) - 1;
  uint32_t base = 0;
  if (Lane() == leader) base = atomicAdd(&sm.cursor, static_cast<uint32_t>(__popc(mask)));
  base = __shfl_sync(kFullMask, base, leader);
  return base + static_cast<uint32_t>(__popc(mask & ((1u << Lane()) - 1u)));
}

// Adds a fixed-point weight to bin `bin` exactly: low word first, then the
// high word plus the low word's carry.
__device__ __forceinline__ void AddFixed(SampleShared& sm, uint32_t bin, uint64_t v) {
  const uint32_t v_lo = static_cast<uint32_t>(v);
  const uint32_t v_hi = static_cast<uint32_t>(v >> 32);
  const uint32_t old = atomicAdd(&sm.lo[bin], v_lo);
  const uint32_t add_hi = v_hi + (old + v_lo < old ? 1u : 0u);
  if (add_hi != 0) atomicAdd(&sm.hi[bin], add_hi);
}

// Histogram update of one candidate per active lane. Lanes that share the
// first active lane's bin are combined into one update (logits crowd into a
// few bins, and same-address shared atomics serialise); the rest add alone.
// All lanes of the warp call it.
template <bool kWeighted>
__device__ __forceinline__ void Tally(SampleShared& sm, bool active, uint32_t bin, uint64_t w) {
  const unsigned act = __ballot_sync(kFullMask, active);
  if (act == 0) return;
  const int leader = __ffs(act) - 1;
  const uint32_t lead_bin = __shfl_sync(kFullMask, bin, leader);
  const bool same = active && bin == lead_bin;
  const unsigned group = __ballot_sync(kFullMask, same);
  uint64_t sum = same ? w : 0;
  if (kWeighted && __popc(group) > 1) sum = WarpSumU64(sum);
  if (Lane() == leader) {
    atomicAdd(&sm.cnt[lead_bin], static_cast<uint32_t>(__popc(group)));
    if (kWeighted) AddFixed(sm, lead_bin, sum);
  }
  if (active && !same) {
    atomicAdd(&sm.cnt[bin], 1u);
    if (kWeighted) AddFixed(sm, bin, w);
  }
}

// Calls f(i, row[i], i < n) for i over [0, n) in a loop whose trip count is
// the same for all threads (f may use warp collectives). A 16-byte aligned
// row (n % 4 == 0) is read as float4, kVecUnroll of them per thread in
// flight, each lane taking 4 consecutive logits: one block per row is bound
// by memory latency, so bytes in flight set the speed. Other rows are read
// one float at a time, kUnroll per thread.
template <typename F>
__device__ __forceinline__ void ForRow(const float* row, int n, F&& f) {
  const int tid = static_cast<int>(threadIdx.x);
  if ((reinterpret_cast<uintptr_t>(row) & 15u) == 0) {
    const float4* row4 = reinterpret_cast<const float4*>(row);
    const int n4 = n / 4;
    for (int base = 0; base < n4; base += kBlock * kVecUnroll) {
      float4 v[kVecUnroll];
#pragma unroll
      for (int u = 0; u < kVecUnroll; ++u) {
        const int j = base + u * kBlock + tid;
        v[u] = j < n4 ? row4[j] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int u = 0; u < kVecUnroll; ++u) {
        const int j = base + u * kBlock + tid;
        const bool valid = j < n4;
        f(4 * j, v[u].x, valid);
        f(4 * j + 1, v[u].y, valid);
        f(4 * j + 2, v[u].z, valid);
        f(4 * j + 3, v[u].w, valid);
      }
    }
    if (4 * n4 < n) {  // the last n % 4 logits
      const int i = 4 * n4 + tid;
      f(i, i < n ? row[i] : 0.0f, i < n);
    }
    return;
  }
  for (int base = 0; base < n; base += kBlock * kUnroll) {
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * kBlock + tid;
      v[u] = i < n ? row[i] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * kBlock + tid;
      f(i, v[u], i < n);
    }
  }
}

// The same over a compacted list ids[0, m): f(id, row[id], valid). With
// kInPlace, f may overwrite ids[] at positions below the number of ids
// visited so far: a barrier separates each chunk's reads from f's writes.
template <bool kInPlace, typename F>
__device__ __forceinline__ void ForIds(const float* row, const int32_t* ids, int m, F&& f) {
  for (int base = 0; base < m; base += kBlock * kUnroll) {
    int id[kUnroll];
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = base + u * kBlock + static_cast<int>(threadIdx.x);
      id[u] = j < m ? ids[j] : 0;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = base + u * kBlock + static_cast<int>(threadIdx.x);
      v[u] = j < m ? row[id[u]] : 0.0f;
    }
    if (kInPlace) __syncthreads();
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = base + u * kBlock + static_cast<int>(threadIdx.x);
      f(id[u], v[u], j < m);
    }
  }
}

// Sorts sm.keys[0, m) descending (m <= kSmallCap), padding with zeros to a
// power of two. Bitonic: log2(P) (log2(P) + 1) / 2 barrier-separated stages.
__device__ __forceinline__ void SortKeys(SampleShared& sm, uint32_t m) {
  uint32_t p = 1;
  while (p < m) p *= 2;
  for (uint32_t i = m + threadIdx.x; i < p; i += kBlock) sm.keys[i] = 0;
  __syncthreads();
  for (uint32_t k = 2; k <= p; k *= 2) {
    for (uint32_t j = k / 2; j > 0; j /= 2) {
      for (uint32_t i = threadIdx.x; i < p; i += kBlock) {
        const uint32_t partner = i ^ j;
        if (partner > i) {
          const uint64_t a = sm.keys[i];
          const uint64_t b = sm.keys[partner];
          const bool descending = (i & k) == 0;
          if (descending ? a < b : a > b) {
            sm.keys[i] = b;
            sm.keys[partner] = a;
          }
        }
      }
      __syncthreads();
    }
  }
}

// ---------------------------------------------------------------------------
// Selection.

// What a row search works on; the same in every thread.
struct RowView {
  float* row;    // (n) logits, NaN-free
  int32_t* ids;  // (n) workspace for compacted candidate ids
  int n;
  float lmax;    // max of row
  float scale0;  // first-level bins per unit of logit below lmax, or 0
  float temperature;
};

// First-level bins: 0 for the max logit, then (lmax - l) * scale0 over 1..255
// (255 also takes -inf and everything past the range). Non-increasing in l,
// so bins are contiguous ranges of the sorted order.
__device__ __forceinline__ uint32_t FirstBin(float l, const RowView& v) {
  if (l == v.lmax) return 0;
  if (v.scale0 == 0.0f) return 1;
  const float d = __fmul_rn(__fsub_rn(v.lmax, l), v.scale0);
  return 1u + static_cast<uint32_t>(fminf(d, static_cast<float>(kBins - 2)));
}

__device__ __forceinline__ float FirstScale(float lmax, float lmin) {
  const float range = lmax - lmin;
  if (!(isfinite(lmax) && isfinite(lmin) && isfinite(range) && range > 0.0f)) return 0.0f;
  return static_cast<float>(kBins - 2) / range;
}

__device__ __forceinline__ uint64_t FixedWeightOf(float l, const RowView& v) {
  return ToFixed(Weight(l, v.lmax, v.temperature));
}

// Whether a running (count, weight) has reached level x: count >= x for
// count searches; weight > x (strict) or >= x for weight searches.
template <bool kWeighted>
__device__ __forceinline__ bool Reached(uint32_t count, uint64_t weight, double x, bool strict) {
  if constexpr (kWeighted) {
    const double w = static_cast<double>(weight);
    return strict ? w > x : w >= x;
  } else {
    return static_cast<double>(count) >= x;
  }
}

// Warp 0 only: scans the histogram in bin order from the running totals
// (count_before, weight_before) and publishes the first bin at which the level
// is reached (sm.pick_*), or the grand totals when none is.
template <bool kWeighted>
__device__ __forceinline__ void FindCrossing(SampleShared& sm, uint32_t count_before,
                                             uint64_t weight_before, double x, bool strict) {
  const int lane = Lane();
  uint32_t c[8];
  uint64_t w[8];
  uint32_t lane_c = 0;
  uint64_t lane_w = 0;
#pragma unroll
  for (int b = 0; b < 8; ++b) {
    const int bin = lane * 8 + b;
    c[b] = sm.cnt[bin];
    w[b] = kWeighted ? (static_cast<uint64_t>(sm.hi[bin]) << 32) | sm.lo[bin] : 0;
    lane_c += c[b];
    lane_w += w[b];
  }
  uint32_t inc_c = lane_c;
  uint64_t inc_w = lane_w;
#pragma unroll
  for (int o = 1; o < kWarpSize; o *= 2) {
    const uint32_t yc = __shfl_up_sync(kFullMask, inc_c, o);
    const uint64_t yw = __shfl_up_sync(kFullMask, inc_w, o);
    if (lane >= o) {
      inc_c += yc;
      inc_w += yw;
    }
  }
  uint32_t run_c = count_before + inc_c - lane_c;
  uint64_t run_w = weight_before + inc_w - lane_w;
  int hit = -1;
  uint32_t hit_c = 0, hit_before_c = 0;
  uint64_t hit_before_w = 0;
#pragma unroll
  for (int b = 0; b < 8; ++b) {
    const uint32_t next_c = run_c + c[b];
    const uint64_t next_w = run_w + w[b];
    if (hit < 0 && c[b] > 0 && Reached<kWeighted>(next_c, next_w, x, strict)) {
      hit = b;
      hit_c = c[b];
      hit_before_c = run_c;
      hit_before_w = run_w;
    }
    run_c = next_c;
    run_w = next_w;
  }
  const unsigned hits = __ballot_sync(kFullMask, hit >= 0);
  if (hits == 0) {
    if (lane == kWarpSize - 1) {
      sm.pick_found = 0;
      sm.pick_total_count = run_c;
      sm.pick_total_weight = run_w;
    }
  } else if (lane == __ffs(hits) - 1) {
    sm.pick_found = 1;
    sm.pick_bin = lane * 8 + hit;
    sm.pick_bin_count = hit_c;
    sm.pick_count_before = hit_before_c;
    sm.pick_weight_before = hit_before_w;
  }
}

// A search's answer, the same in every thread.
struct Crossing {
  bool found;
  uint32_t len;        // found: prefix length through the crossing token; else all candidates
  uint64_t weight;     // (weight searches) that prefix's fixed-point weight; else the total
  uint64_t key;        // found: the crossing token's key (the prefix is {key >= this})
  uint32_t in_shared;  // the sorted order's first in_shared keys are in sm.keys
};

// In the sorted sm.keys[0, m) (a bin, preceded in the sorted order by
// base_count candidates of weight base_weight): the first position where the
// running total reaches x.
template <bool kWeighted>
__device__ __forceinline__ Crossing ScanSorted(SampleShared& sm, const RowView& v, uint32_t m,
                                               uint32_t base_count, uint64_t base_weight, double x,
                                               bool strict) {
  Crossing r{true, 0, 0, 0, 0};
  if constexpr (!kWeighted) {
    // The bin holds the crossing, so x - base_count is in [1, m].
    int64_t idx = static_cast<int64_t>(x) - static_cast<int64_t>(base_count) - 1;
    idx = idx < 0 ? 0 : (idx >= static_cast<int64_t>(m) ? static_cast<int64_t>(m) - 1 : idx);
    r.len = base_count + static_cast<uint32_t>(idx) + 1;
    r.key = sm.keys[idx];
    __syncthreads();  // sm.keys may be rewritten right after
    return r;
  } else {
    const uint32_t first = threadIdx.x * kPerThread;
    uint64_t cum[kPerThread];
    uint64_t local = 0;
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) {
      const uint32_t pos = first + e;
      if (pos < m) local += FixedWeightOf(KeyLogit(sm.keys[pos]), v);
      cum[e] = local;
    }
    uint64_t total;
    const uint64_t before = base_weight + BlockExclusiveScanU64(sm, local, &total);
    uint64_t not_reached = 0;
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) {
      cum[e] += before;
      if (first + e < m && !Reached<true>(0, cum[e], x, strict)) ++not_reached;
    }
    // Prefix sums only grow, so the positions short of x are a prefix.
    uint32_t idx = static_cast<uint32_t>(BlockReduceU64<Op::kSum>(sm, not_reached));
    if (idx >= m) idx = m - 1;  // cannot happen: the bin holds the crossing
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) {
      if (first + e == idx) sm.cum_at = cum[e];
    }
    __syncthreads();
    r.len = base_count + idx + 1;
    r.weight = sm.cum_at;
    r.key = sm.keys[idx];
    __syncthreads();
    return r;
  }
}

// Gathers the keys of {key >= bound} into sm.keys (at most kSmallCap of
// them, which the caller knows) and sorts them. Returns how many.
__device__ __forceinline__ uint32_t GatherSorted(SampleShared& sm, const RowView& v,
                                                 uint64_t bound) {
  if (threadIdx.x == 0) sm.cursor = 0;
  __syncthreads();
  ForRow(v.row, v.n, [&](int i, float l, bool valid) {
    const uint64_t k = MakeKey(l, i);
    const bool take = valid && k >= bound;
    const uint32_t slot = AppendSlot(sm, take);
    if (take && slot < kSmallCap) sm.keys[slot] = k;
  });
  __syncthreads();
  const uint32_t m = min(sm.cursor, static_cast<uint32_t>(kSmallCap));
  SortKeys(sm, m);
  return m;
}

// Among the candidates {key >= bound} in the sorted order: the first prefix
// whose count (kWeighted false; x = the count wanted) or fixed-point weight
// (kWeighted; > x when strict, else >= x) reaches x. With want_prefix, when
// the first level's prefix through the crossing bin fits kSmallCap, all of it
// is left sorted in sm.keys (Crossing::in_shared).
template <bool kWeighted>
__device__ Crossing Select(SampleShared& sm, const RowView& v, uint64_t bound, double x,
                           bool strict, bool want_prefix) {
  uint32_t count_before = 0;
  uint64_t weight_before = 0;
  uint64_t kmax = 0;  // deeper levels: largest key of the candidates
  int shift = 0;      // deeper levels: bin = (kmax >> shift) - (key >> shift)
  int n_cand = v.n;
  for (int level = 0;; ++level) {
    for (int b = threadIdx.x; b < kBins; b += kBlock) {
      sm.cnt[b] = 0;
      sm.lo[b] = 0;
      sm.hi[b] = 0;
    }
    __syncthreads();
    if (level == 0) {
      ForRow(v.row, v.n, [&](int i, float l, bool valid) {
        const bool take = valid && MakeKey(l, i) >= bound;
        Tally<kWeighted>(sm, take, FirstBin(l, v), kWeighted && take ? FixedWeightOf(l, v) : 0);
      });
    } else {
      ForIds<false>(v.row, v.ids, n_cand, [&](int id, float l, bool valid) {
        const uint32_t bin = static_cast<uint32_t>((kmax >> shift) - (MakeKey(l, id) >> shift));
        Tally<kWeighted>(sm, valid, bin, kWeighted && valid ? FixedWeightOf(l, v) : 0);
      });
    }
    __syncthreads();
    if (threadIdx.x < kWarpSize)
      FindCrossing<kWeighted>(sm, count_before, weight_before, x, strict);
    __syncthreads();
    if (!sm.pick_found) {
      const Crossing r{false, sm.pick_total_count, sm.pick_total_weight, 0, 0};
      __syncthreads();
      return r;
    }
    const uint32_t bin = static_cast<uint32_t>(sm.pick_bin);
    const uint32_t bin_count = sm.pick_bin_count;
    count_before = sm.pick_count_before;
    weight_before = sm.pick_weight_before;
    __syncthreads();

    const bool whole_prefix =
        level == 0 && want_prefix && count_before + bin_count <= static_cast<uint32_t>(kSmallCap);
    if (whole_prefix || bin_count <= static_cast<uint32_t>(kSmallCap)) {
      if (threadIdx.x == 0) sm.cursor = 0;
      __syncthreads();
      if (level == 0) {
        ForRow(v.row, v.n, [&](int i, float l, bool valid) {
          const uint64_t k = MakeKey(l, i);
          const uint32_t b = FirstBin(l, v);
          const bool take = valid && k >= bound && (whole_prefix ? b <= bin : b == bin);
          const uint32_t slot = AppendSlot(sm, take);
          if (take && slot < kSmallCap) sm.keys[slot] = k;
        });
      } else {
        ForIds<false>(v.row, v.ids, n_cand, [&](int id, float l, bool valid) {
          const uint64_t k = MakeKey(l, id);
          const bool take = valid && static_cast<uint32_t>((kmax >> shift) - (k >> shift)) == bin;
          const uint32_t slot = AppendSlot(sm, take);
          if (take && slot < kSmallCap) sm.keys[slot] = k;
        });
      }
      __syncthreads();
      const uint32_t m = min(sm.cursor, static_cast<uint32_t>(kSmallCap));
      SortKeys(sm, m);
      Crossing r = whole_prefix
                       ? ScanSorted<kWeighted>(sm, v, m, 0, 0, x, strict)
                       : ScanSorted<kWeighted>(sm, v, m, count_before, weight_before, x, strict);
      r.in_shared = whole_prefix ? m : 0;
      return r;
    }

    // Too many for shared memory: keep the bin's ids for the next level and
    // find the key bits in which they differ.
    if (threadIdx.x == 0) sm.cursor = 0;
    __syncthreads();
    uint64_t kmin_t = ~0ull, kmax_t = 0;
    if (level == 0) {
      ForRow(v.row, v.n, [&](int i, float l, bool valid) {
        const uint64_t k = MakeKey(l, i);
        const bool take = valid && k >= bound && FirstBin(l, v) == bin;
        const uint32_t slot = AppendSlot(sm, take);
        if (take) {
          v.ids[slot] = i;
          kmin_t = k < kmin_t ? k : kmin_t;
          kmax_t = k > kmax_t ? k : kmax_t;
        }
      });
    } else {
      ForIds<true>(v.row, v.ids, n_cand, [&](int id, float l, bool valid) {
        const uint64_t k = MakeKey(l, id);
        const bool take = valid && static_cast<uint32_t>((kmax >> shift) - (k >> shift)) == bin;
        const uint32_t slot = AppendSlot(sm, take);
        if (take) {
          v.ids[slot] = id;
          kmin_t = k < kmin_t ? k : kmin_t;
          kmax_t = k > kmax_t ? k : kmax_t;
        }
      });
    }
    // The reductions' barriers also publish the ids written above.
    const uint64_t kmin = BlockReduceU64<Op::kMin>(sm, kmin_t);
    kmax = BlockReduceU64<Op::kMax>(sm, kmax_t);
    n_cand = static_cast<int>(bin_count);
    // More than kSmallCap distinct keys, so kmin < kmax.
    const int top_bit = 63 - __clzll(static_cast<long long>(kmin ^ kmax));
    shift = top_bit >= 7 ? top_bit - 7 : 0;
  }
}

// Total fixed-point weight of {key >= bound} and how many of them have
// w >= min_p.
struct Mass {
  uint64_t weight;
  uint32_t min_p_count;
};
__device__ __forceinline__ Mass MassOf(SampleShared& sm, const RowView& v, uint64_t bound,
                                       float min_p) {
  uint64_t w_t = 0, c_t = 0;
  ForRow(v.row, v.n, [&](int i, float l, bool valid) {
    if (valid && MakeKey(l, i) >= bound) {
      const float w = Weight(l, v.lmax, v.temperature);
      w_t += ToFixed(w);
      c_t += w >= min_p ? 1 : 0;
    }
  });
  const uint64_t w = BlockReduceU64<Op::kSum>(sm, w_t);
  const uint64_t c = BlockReduceU64<Op::kSum>(sm, c_t);
  return Mass{w, static_cast<uint32_t>(c)};
}

// Steps 3-4 on candidates already sorted in sm.keys[0, m). Without a given
// total (m is then the whole top-k set) it computes W and the min-p prefix
// itself; otherwise W and limit (<= m) come from the caller.
__device__ __forceinline__ int SampleSorted(SampleShared& sm, const RowView& v, uint32_t m,
                                            bool given, uint64_t given_w, uint32_t given_limit,
                                            const SamplingParams& p, float u) {
  const uint32_t first = threadIdx.x * kPerThread;
  uint64_t cum[kPerThread];
  uint64_t local = 0, min_p_local = 0;
#pragma unroll
  for (int e = 0; e < kPerThread; ++e) {
    if (first + e < m) {
      const float w = Weight(KeyLogit(sm.keys[first + e]), v.lmax, v.temperature);
      local += ToFixed(w);
      min_p_local += w >= p.min_p ? 1 : 0;
    }
    cum[e] = local;
  }
  uint64_t total;
  const uint64_t before = BlockExclusiveScanU64(sm, local, &total);
#pragma unroll
  for (int e = 0; e < kPerThread; ++e) cum[e] += before;
  const uint32_t min_p_count = static_cast<uint32_t>(BlockReduceU64<Op::kSum>(sm, min_p_local));
  const uint64_t w_total = given ? given_w : total;
  uint32_t limit = given ? given_limit : min(m, min_p_count);
  if (limit < 1) limit = 1;  // the top token always survives (w = 1 >= min_p)

  // top-p: the shortest prefix within limit whose weight reaches top_p * W.
  uint32_t kept = limit;
  if (p.top_p < 1.0f) {
    const double level = static_cast<double>(p.top_p) * static_cast<double>(w_total);
    uint64_t short_t = 0;
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) {
      short_t += (first + e < limit && static_cast<double>(cum[e]) < level) ? 1 : 0;
    }
    const uint32_t n_short = static_cast<uint32_t>(BlockReduceU64<Op::kSum>(sm, short_t));
    if (n_short < limit) kept = n_short + 1;
  }
#pragma unroll
  for (int e = 0; e < kPerThread; ++e) {
    if (first + e == kept - 1) sm.cum_at = cum[e];
  }
  __syncthreads();
  const uint64_t kept_w = sm.cum_at;
  // The draw: the first kept token whose running weight exceeds u * W'.
  const double target = static_cast<double>(u) * static_cast<double>(kept_w);
  uint64_t below_t = 0;
#pragma unroll
  for (int e = 0; e < kPerThread; ++e) {
    below_t += (first + e < kept && static_cast<double>(cum[e]) <= target) ? 1 : 0;
  }
  const uint32_t n_below = static_cast<uint32_t>(BlockReduceU64<Op::kSum>(sm, below_t));
  const int token = KeyId(sm.keys[n_below < kept ? n_below : 0]);
  __syncthreads();
  return token;
}

// Steps 3-4 for temperature > 0: the sampled token.
__device__ __forceinline__ int Choose(SampleShared& sm, const RowView& v, const SamplingParams& p,
                                      float u, int top_token) {
  const uint32_t n = static_cast<uint32_t>(v.n);
  const uint32_t k_len = (p.top_k > 0 && static_cast<uint32_t>(p.top_k) < n) ? p.top_k : n;
  constexpr uint32_t kCap = kSmallCap;

  // top-k: the candidates are {key >= k_bound}.
  uint64_t k_bound = 0;
  uint32_t in_shared = 0;
  if (k_len < n) {
    const Crossing c = Select<false>(sm, v, 0, k_len, false, k_len <= kCap);
    k_bound = c.key;
    in_shared = c.in_shared;
  }
  if (k_len <= kCap) {
    if (in_shared < k_len) GatherSorted(sm, v, k_bound);
    return SampleSorted(sm, v, k_len, false, 0, 0, p, u);
  }

  // A large candidate set: W and min-p by a pass, then searches.
  const Mass mass = MassOf(sm, v, k_bound, p.min_p);
  uint32_t limit = min(k_len, mass.min_p_count);
  if (limit < 1) limit = 1;
  uint64_t limit_bound = k_bound;
  in_shared = 0;
  if (limit < k_len) {
    const Crossing c = Select<false>(sm, v, k_bound, limit, false, limit <= kCap);
    limit_bound = c.key;
    in_shared = c.in_shared;
  }
  if (limit <= kCap) {
    if (in_shared < limit) GatherSorted(sm, v, limit_bound);
    return SampleSorted(sm, v, limit, true, mass.weight, limit, p, u);
  }

  uint32_t kept = limit;
  uint64_t kept_w;
  uint64_t kept_bound = limit_bound;
  in_shared = 0;
  if (p.top_p < 1.0f) {
    const double level = static_cast<double>(p.top_p) * static_cast<double>(mass.weight);
    const Crossing c = Select<true>(sm, v, limit_bound, level, false, true);
    kept_w = c.weight;
    if (c.found) {
      kept = c.len;
      kept_bound = c.key;
      in_shared = c.in_shared;
    }
  } else {
    kept_w = limit_bound == k_bound ? mass.weight : MassOf(sm, v, limit_bound, 0.0f).weight;
  }
  const double target = static_cast<double>(u) * static_cast<double>(kept_w);
  if (in_shared >= kept) return KeyId(ScanSorted<true>(sm, v, kept, 0, 0, target, true).key);
  const Crossing c = Select<true>(sm, v, kept_bound, target, true, false);
  return c.found ? KeyId(c.key) : top_token;
}

__device__ __forceinline__ float RawLogprob(float x, float raw_max, double log_z) {
  if (x == raw_max) return static_cast<float>(-log_z);
  return static_cast<float>(static_cast<double>(x) - static_cast<double>(raw_max) - log_z);
}

// The kernel's arguments (see LaunchSample), the same for every row.
struct SampleKernelArgs {
  float* logits;  // (n_seq, n_vocab)
  int n_vocab;
  const SamplingParams* params;  // (n_seq)
  const int32_t* history;        // (n_seq, hist_stride) or null
  int64_t hist_stride;
  const int32_t* hist_len;  // (n_seq) or null
  const uint64_t* streams;  // (n_seq) or null
  const int32_t* steps;     // (n_seq)
  char* workspace;          // (n_seq, 2 * n_vocab) 4-byte words
  DeviceSample* out;        // (n_seq)
};

// Row s: samples its token and writes out[s], by the kBlock threads of one
// block (it contains __syncthreads() and no early return). sm: the block's
// shared state.
__device__ __forceinline__ void SampleRow(const SampleKernelArgs& a, int s, SampleShared& sm) {
  const int n = a.n_vocab;
  float* row = a.logits + static_cast<int64_t>(s) * n;
  int32_t* ids = reinterpret_cast<int32_t*>(a.workspace) + static_cast<int64_t>(s) * 2 * n;
  float* raw_saved = reinterpret_cast<float*>(ids + n);  // (n) raw values of penalised tokens
  const SamplingParams p = a.params[s];
  const int n_top = max(0, min(p.n_logprobs, min(kMaxEventLogprobs, n)));

  // 1. Raw pass.
  float mx_t = -INFINITY, mn_t = INFINITY;
  ForRow(row, n, [&](int i, float x, bool valid) {
    if (!valid) return;
    if (isnan(x)) {
      x = -INFINITY;
      row[i] = x;
    }
    mx_t = fmaxf(mx_t, x);
    if (x > -INFINITY) mn_t = fminf(mn_t, x);
  });
  const float raw_max = BlockMinMaxF<true>(sm, mx_t);
  const float raw_min = BlockMinMaxF<false>(sm, mn_t);

  // 2. Top raw logits.
  if (n_top > 0) {
    const RowView raw{row, ids, n, raw_max, FirstScale(raw_max, raw_min), 1.0f};
    const Crossing c = Select<false>(sm, raw, 0, n_top, false, true);
    if (c.in_shared < static_cast<uint32_t>(n_top)) GatherSorted(sm, raw, c.key);
    if (static_cast<int>(threadIdx.x) < n_top) sm.top_keys[threadIdx.x] = sm.keys[threadIdx.x];
    __syncthreads();
  }

  // 3. Penalties. counts (aliasing ids) is zeroed for the window's tokens,
  // counted with atomics, and claimed (negated) by exactly one thread per
  // distinct token, which applies the penalty.
  int hist_len = 0;
  if (a.history != nullptr && a.hist_len != nullptr) {
    hist_len = a.hist_len[s];
    hist_len =
        hist_len < 0 ? 0 : (hist_len > a.hist_stride ? static_cast<int>(a.hist_stride) : hist_len);
  }
  const int window = p.penalty_last_n < 0 ? hist_len : min(hist_len, p.penalty_last_n);
  const bool penalize = window > 0 && !(p.repetition_penalty == 1.0f &&
                                        p.presence_penalty == 0.0f && p.frequency_penalty == 0.0f);
  const int32_t* recent =
      penalize ? a.history + static_cast<int64_t>(s) * a.hist_stride + (hist_len - window)
               : nullptr;
  uint64_t raw_sum_t = 0;  // correction of the raw sum for penalised tokens (mod 2^64)
  if (penalize) {
    int32_t* counts = ids;
    for (int j = threadIdx.x; j < window; j += kBlock) {
      const int t = recent[j];
      if (t >= 0 && t < n) counts[t] = 0;
    }
    __syncthreads();
    for (int j = threadIdx.x; j < window; j += kBlock) {
      const int t = recent[j];
      if (t >= 0 && t < n) atomicAdd(&counts[t], 1);
    }
    __syncthreads();
    for (int j = threadIdx.x; j < window; j += kBlock) {
      const int t = recent[j];
      if (t < 0 || t >= n) continue;
      const int c = counts[t];
      if (c <= 0 || atomicCAS(&counts[t], c, -c) != c) continue;
      const float x = row[t];
      float y = x > 0.0f ? __fdiv_rn(x, p.repetition_penalty) : __fmul_rn(x, p.repetition_penalty);
      y = __fsub_rn(
          y, __fadd_rn(p.presence_penalty, __fmul_rn(static_cast<float>(c), p.frequency_penalty)));
      raw_saved[t] = x;
      row[t] = y;
      raw_sum_t += RawTerm(x, raw_max) - RawTerm(y, raw_max);
    }
    __syncthreads();
  }

  // 4. Raw log-sum-exp; max and min of the penalised row.
  uint64_t best_t = 0;
  float lmin_t = INFINITY;
  ForRow(row, n, [&](int i, float l, bool valid) {
    if (!valid) return;
    raw_sum_t += RawTerm(l, raw_max);
    const uint64_t k = MakeKey(l, i);
    best_t = k > best_t ? k : best_t;
    if (l > -INFINITY) lmin_t = fminf(lmin_t, l);
  });
  const uint64_t raw_sum = BlockReduceU64<Op::kSum>(sm, raw_sum_t);
  const uint64_t best = BlockReduceU64<Op::kMax>(sm, best_t);
  const float lmin = BlockMinMaxF<false>(sm, lmin_t);
  const double log_z = log(static_cast<double>(raw_sum) / kFixedScale);
  const int top_token = KeyId(best);

  // 5. The token.
  int token = top_token;
  if (p.temperature != 0.0f) {
    const float lmax = KeyLogit(best);
    const RowView v{row, ids, n, lmax, FirstScale(lmax, lmin), p.temperature};
    const uint64_t stream = a.streams != nullptr ? a.streams[s] : 0;
    const uint64_t step = static_cast<uint64_t>(static_cast<int64_t>(a.steps[s]));
    const float u = UniformFloat(p.seed, stream, step, 0);
    token = Choose(sm, v, p, u, top_token);
  }

  // 6. Raw log-probabilities: the chosen token's raw logit is saved if the
  // penalties touched it.
  if (threadIdx.x == 0) sm.flag = 0;
  __syncthreads();
  if (penalize) {
    for (int j = threadIdx.x; j < window; j += kBlock) {
      if (recent[j] == token) sm.flag = 1;
    }
  }
  __syncthreads();
  DeviceSample* o = a.out + s;
  if (threadIdx.x == 0) {
    const float x = sm.flag ? raw_saved[token] : row[token];
    o->token = token;
    o->logprob = RawLogprob(x, raw_max, log_z);
    o->n_top = n_top;
    o->pad = 0;
  }
  if (threadIdx.x < kMaxEventLogprobs) {
    EventLogprob e{-1, NAN};
    if (static_cast<int>(threadIdx.x) < n_top) {
      const uint64_t k = sm.top_keys[threadIdx.x];
      e = EventLogprob{KeyId(k), RawLogprob(KeyLogit(k), raw_max, log_z)};
    }
    o->top[threadIdx.x] = e;
  }
}

}  // namespace m40llm::gpu::sampling
