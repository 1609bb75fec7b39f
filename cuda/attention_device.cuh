// Device side of decode attention: what one block of the split-K attention
// kernel and of the merge kernel does, as __device__ functions that the
// standalone kernels (attention.cu) and the persistent decode kernel both
// call. Cache layout as in attention.cuh. Included only by .cu files (see
// cuda/README.md, "Device functions"); C++17 and sm_52 features only.
//
// Work split. A block serves one (sequence, kv head, tile of up to kHeads
// query heads of that kv head, split of the positions): the query heads that
// share a kv head read each K and V row from DRAM once. Grid x runs over
// (kv head, head tile) with the head tile fastest, so blocks that read the same
// K/V run side by side and share them through L2 when a group needs several
// tiles. When (sequences x kv heads) cannot fill the GPU, the positions of a
// sequence are split: each split writes its unnormalised output with its
// running max and sum to the workspace, and a second kernel merges the splits
// with a log-sum-exp weighting. A sequence that fits one split (short
// contexts, or every context when the batch alone fills the GPU) is finished
// by its single block, and the merge kernel skips it.
//
// Inside a block. The split's positions go in tiles of kTile. A row of K or V
// (head_dim halves) is read by kLanesPerRow lanes, 16 bytes (8 halves) each,
// so a warp reads 32 / kLanesPerRow whole rows per load. For each tile:
//   1. scores: each lane dots its 8 K values with its 8 values of each query
//      head (held in registers); a butterfly over the row's lanes sums them;
//   2. online softmax: one warp per head takes the tile's max, turns scores
//      into exp(s - m_new) in shared memory, and rescales the running sum;
//   3. values: each lane rescales its accumulators by exp(m_old - m_new) and
//      adds p * V for its rows and 8 dims.
// At the end the row lanes' partial outputs are summed by shuffles within the
// warp, then across warps in shared memory in a fixed order (deterministic).
#pragma once

#if !defined(__CUDACC__)
#error "cuda/attention_device.cuh is for CUDA sources only"
#endif

#include <cmath>
#include <cstdint>

#include "cuda/attention.cuh"
#include "cuda/kernel_util.h"

namespace m40llm::gpu::attention {

using internal::kWarpSize;

inline constexpr int kBlock = 128;     // threads per attention block (4 warps)
inline constexpr int kTile = 128;      // positions per tile (shared scores: kHeads x kTile)
inline constexpr int kMaxSplits = 32;  // the merge reads one split per lane of one warp
static_assert(kMaxSplits <= kWarpSize, "the merge kernel weights the splits in one warp");

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// A sequence's (slot, length) as the kernels accept them; others give NaN.
__device__ __forceinline__ bool ValidSequence(int slot, int len, int max_slots, int max_len) {
  return slot >= 0 && slot < max_slots && len >= 1 && len <= max_len;
}

// Shared memory of DecodeAttentionBlock.
template <int kHeads>
struct DecodeAttentionShared {
  float s_p[kHeads][kTile];                 // scores, then exp(score - running max)
  float s_m[kHeads];                        // final max, published after the last tile
  float s_l[kHeads];                        // final sum of exp(score - max), likewise
  float s_alpha[kHeads];                    // this tile's rescale of the old accumulators
  float s_o[kHeads][kAttentionMaxHeadDim];  // the block's summed output
};

// Split `split` of sequence `seq` for head tile `head_item` (kv head
// head_item / tiles_per_kv, its query heads from (head_item % tiles_per_kv) *
// kHeads), by the kBlock threads of one block (it contains __syncthreads();
// its early returns are block-uniform and come before any barrier). A
// sequence with one split writes out; others write their part of part_o and
// part_ml for DecodeAttentionMergeBlock.
template <int kLanesPerRow, int kHeads>
__device__ __forceinline__ void DecodeAttentionBlock(
    int head_item, int split, int64_t seq,
    const float* __restrict__ q,  // (n_seq, q_stride), heads packed in a row
    int64_t q_stride,
    const int32_t* __restrict__ slots,     // (n_seq)
    const int32_t* __restrict__ lengths,   // (n_seq)
    const uint16_t* __restrict__ k_cache,  // (slots, n_head_kv, ctx, hd)
    const uint16_t* __restrict__ v_cache,  // (slots, n_head_kv, ctx, hd)
    int max_len, int n_head, int n_head_kv, int head_dim, int max_slots, int ctx_per_slot,
    int group, int split_len, int n_splits, float scale,
    float* __restrict__ part_o,   // (n_seq, n_head, n_splits, head_dim)
    float* __restrict__ part_ml,  // (n_seq, n_head, n_splits, 2)
    float* __restrict__ out,      // (n_seq, n_head, head_dim)
    DecodeAttentionShared<kHeads>& shared) {
  static_assert(
      kLanesPerRow >= 1 && kLanesPerRow <= kWarpSize && (kLanesPerRow & (kLanesPerRow - 1)) == 0,
      "a row's lanes are a power-of-two group of a warp");
  constexpr int kWarps = kBlock / kWarpSize;
  constexpr int kRowsPerWarp = kWarpSize / kLanesPerRow;
  constexpr int kRowsPerStep = kWarps * kRowsPerWarp;
  // Warp w runs the softmax of heads w, w + kWarps, ...
  constexpr int kHeadsPerWarp = (kHeads + kWarps - 1) / kWarps;
  // Score rows in flight per lane. With 4 lanes a row (head_dim <= 32) ptxas
  // 11.8 spills a few registers at 4 for sm_52; those heads are rare.
  constexpr int kScoreUnroll = kLanesPerRow <= 4 ? 2 : 4;
  auto& s_p = shared.s_p;
  auto& s_m = shared.s_m;
  auto& s_l = shared.s_l;
  auto& s_alpha = shared.s_alpha;
  auto& s_o = shared.s_o;

  const int tiles_per_kv = (group + kHeads - 1) / kHeads;
  const int kv_head = head_item / tiles_per_kv;
  const int h0 = kv_head * group + (head_item % tiles_per_kv) * kHeads;
  const int n_h = min(kHeads, (kv_head + 1) * group - h0);  // real heads in this tile
  const int slot = __ldg(slots + seq);
  const int len = __ldg(lengths + seq);
  float* out_rows = out + (seq * n_head + h0) * head_dim;  // (n_h, head_dim)

  if (!ValidSequence(slot, len, max_slots, max_len)) {
    if (split == 0) {
      for (int i = threadIdx.x; i < n_h * head_dim; i += kBlock) out_rows[i] = NAN;
    }
    return;
  }
  const int n_active = (len + split_len - 1) / split_len;
  if (split >= n_active) return;  // block-uniform: before any barrier
  const int begin = split * split_len;
  const int end = min(len, begin + split_len);

  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int sub = lane / kLanesPerRow;  // which row of the warp's group of rows
  const int d0 = (lane % kLanesPerRow) * 8;
  const bool has_dims = d0 < head_dim;  // lanes past head_dim read nothing

  // This lane's 8 dims of each query head; heads past n_h are zeros.
  float qr[kHeads][8];
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    const float* qh = q + seq * q_stride + (h0 + g) * head_dim + d0;
#pragma unroll
    for (int k = 0; k < 8; ++k) qr[g][k] = (g < n_h && has_dims) ? __ldg(qh + k) : 0.0f;
  }
  float acc[kHeads][8];
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
#pragma unroll
    for (int k = 0; k < 8; ++k) acc[g][k] = 0.0f;
  }
  // Running max and sum of exp(score - max) of head warp + j * kWarps, the
  // same in every lane of the warp that owns the head.
  float m_run[kHeadsPerWarp];
  float l_run[kHeadsPerWarp];
#pragma unroll
  for (int j = 0; j < kHeadsPerWarp; ++j) {
    m_run[j] = -INFINITY;
    l_run[j] = 0.0f;
  }

  const int64_t head_stride = static_cast<int64_t>(ctx_per_slot) * head_dim;
  const int64_t kv_off = (static_cast<int64_t>(slot) * n_head_kv + kv_head) * head_stride + d0;
  const uint16_t* k_rows = k_cache + kv_off;  // row j at k_rows + j * head_dim
  const uint16_t* v_rows = v_cache + kv_off;

  for (int tile0 = begin; tile0 < end; tile0 += kTile) {
    const int n_rows = min(kTile, end - tile0);
    const uint16_t* k_tile = k_rows + static_cast<int64_t>(tile0) * head_dim;
    const uint16_t* v_tile = v_rows + static_cast<int64_t>(tile0) * head_dim;

    // 1. Scores. r0 is warp-uniform so every lane reaches the shuffles; rows
    // past the tile load nothing and store nothing.
#pragma unroll kScoreUnroll
    for (int r0 = warp * kRowsPerWarp; r0 < n_rows; r0 += kRowsPerStep) {
      const int r = r0 + sub;
      const bool row_ok = r < n_rows;
      float kf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      if (row_ok && has_dims) {
        const uint4 u =
            __ldg(reinterpret_cast<const uint4*>(k_tile + static_cast<int64_t>(r) * head_dim));
        internal::UnpackHalf8(u, kf);
      }
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; ++k) s = fmaf(qr[g][k], kf[k], s);
#pragma unroll
        for (int offset = kLanesPerRow / 2; offset > 0; offset /= 2) {
          s += __shfl_xor_sync(0xffffffffu, s, offset);
        }
        if (row_ok && d0 == 0) s_p[g][r] = s * scale;
      }
    }
    __syncthreads();

    // 2. Online softmax, one warp per head (padded heads too: their scores
    // are zeros, harmless, and never stored).
#pragma unroll
    for (int j = 0; j < kHeadsPerWarp; ++j) {
      const int g = warp + j * kWarps;
      if (g >= kHeads) break;  // warp-uniform
      float mx = -INFINITY;
      for (int r = lane; r < n_rows; r += kWarpSize) mx = fmaxf(mx, s_p[g][r]);
      const float m_new = fmaxf(m_run[j], WarpMax(mx));
      float sum = 0.0f;
      for (int r = lane; r < n_rows; r += kWarpSize) {
        const float p = expf(s_p[g][r] - m_new);
        s_p[g][r] = p;
        sum += p;
      }
      const float alpha = expf(m_run[j] - m_new);  // 0 on the first tile (m_run = -inf)
      l_run[j] = l_run[j] * alpha + internal::WarpSum(sum);
      m_run[j] = m_new;
      if (lane == 0) s_alpha[g] = alpha;
    }
    __syncthreads();

    // 3. Values: no shuffles here, so rows may diverge within a warp.
#pragma unroll
    for (int g = 0; g < kHeads; ++g) {
      const float alpha = s_alpha[g];
#pragma unroll
      for (int k = 0; k < 8; ++k) acc[g][k] *= alpha;
    }
    if (has_dims) {
#pragma unroll 2
      for (int r = warp * kRowsPerWarp + sub; r < n_rows; r += kRowsPerStep) {
        float vf[8];
        const uint4 u =
            __ldg(reinterpret_cast<const uint4*>(v_tile + static_cast<int64_t>(r) * head_dim));
        internal::UnpackHalf8(u, vf);
#pragma unroll
        for (int g = 0; g < kHeads; ++g) {
          const float p = s_p[g][r];
#pragma unroll
          for (int k = 0; k < 8; ++k) acc[g][k] = fmaf(p, vf[k], acc[g][k]);
        }
      }
    }
    __syncthreads();  // the next tile overwrites s_p and s_alpha
  }

  // Sum the warp's rows: lanes with the same d0 are kLanesPerRow apart.
#pragma unroll
  for (int offset = kLanesPerRow; offset < kWarpSize; offset *= 2) {
#pragma unroll
    for (int g = 0; g < kHeads; ++g) {
#pragma unroll
      for (int k = 0; k < 8; ++k) acc[g][k] += __shfl_xor_sync(0xffffffffu, acc[g][k], offset);
    }
  }
  // Publish the softmax state (read after the barriers below) and sum the
  // warps' outputs, in warp order.
#pragma unroll
  for (int j = 0; j < kHeadsPerWarp; ++j) {
    const int g = warp + j * kWarps;
    if (g < kHeads && lane == 0) {
      s_m[g] = m_run[j];
      s_l[g] = l_run[j];
    }
  }
  for (int w = 0; w < kWarps; ++w) {
    if (warp == w && sub == 0 && has_dims) {
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          s_o[g][d0 + k] = (w == 0 ? 0.0f : s_o[g][d0 + k]) + acc[g][k];
        }
      }
    }
    __syncthreads();
  }

  if (n_active == 1) {
    for (int i = threadIdx.x; i < n_h * head_dim; i += kBlock) {
      const int g = i / head_dim;
      out_rows[i] = s_o[g][i - g * head_dim] / s_l[g];
    }
  } else {
    for (int i = threadIdx.x; i < n_h * head_dim; i += kBlock) {
      const int g = i / head_dim;
      const int64_t row = (seq * n_head + h0 + g) * n_splits + split;
      part_o[row * head_dim + (i - g * head_dim)] = s_o[g][i - g * head_dim];
    }
    if (threadIdx.x < n_h) {
      const int64_t row = (seq * n_head + h0 + threadIdx.x) * n_splits + split;
      part_ml[row * 2] = s_m[threadIdx.x];
      part_ml[row * 2 + 1] = s_l[threadIdx.x];
    }
  }
}

// Shared memory of DecodeAttentionMergeBlock.
struct DecodeAttentionMergeShared {
  float s_w[kMaxSplits];
  float s_total;
};

// Merges the splits of head h of sequence seq, if it was split: out = sum_s
// w_s o_s / sum_s w_s l_s with w_s = exp(m_s - max_s m_s). By the
// kMergeBlock threads of one block (it contains __syncthreads(); its early
// returns are block-uniform).
template <int kMergeBlock>
__device__ __forceinline__ void DecodeAttentionMergeBlock(
    int h, int64_t seq,
    const int32_t* __restrict__ slots,    // (n_seq)
    const int32_t* __restrict__ lengths,  // (n_seq)
    int max_len, int max_slots, int n_head, int head_dim, int split_len, int n_splits,
    const float* __restrict__ part_o,   // (n_seq, n_head, n_splits, hd)
    const float* __restrict__ part_ml,  // (n_seq, n_head, n_splits, 2)
    float* __restrict__ out,            // (n_seq, n_head, head_dim)
    DecodeAttentionMergeShared& shared) {
  float* s_w = shared.s_w;
  float& s_total = shared.s_total;
  const int slot = __ldg(slots + seq);
  const int len = __ldg(lengths + seq);
  // Invalid sequences already hold NaN; one-split sequences their output.
  if (!ValidSequence(slot, len, max_slots, max_len)) return;
  const int n_active = (len + split_len - 1) / split_len;
  if (n_active <= 1) return;

  const int64_t row0 = (seq * n_head + h) * n_splits;
  if (threadIdx.x < kWarpSize) {
    const int s = threadIdx.x;
    const bool active = s < n_active;
    const float m = active ? __ldg(part_ml + (row0 + s) * 2) : -INFINITY;
    const float l = active ? __ldg(part_ml + (row0 + s) * 2 + 1) : 0.0f;
    const float m_max = WarpMax(m);
    const float w = active ? expf(m - m_max) : 0.0f;
    const float total = internal::WarpSum(w * l);
    if (s < kMaxSplits) s_w[s] = w;
    if (s == 0) s_total = total;
  }
  __syncthreads();
  const float total = s_total;
  for (int d = threadIdx.x; d < head_dim; d += kMergeBlock) {
    float acc = 0.0f;
    for (int s = 0; s < n_active; ++s)
      acc = fmaf(s_w[s], __ldg(part_o + (row0 + s) * head_dim + d), acc);
    out[(seq * n_head + h) * head_dim + d] = acc / total;
  }
}

}  // namespace m40llm::gpu::attention
