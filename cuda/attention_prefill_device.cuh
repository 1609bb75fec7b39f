// Device side of causal prefill attention: what one block of the prefill
// attention kernel does, as a __device__ function that the standalone kernel
// (attention_prefill.cu) and the persistent decode kernel both call. Cache
// layout as in attention_prefill.cuh. Included only by .cu files (see
// cuda/README.md, "Device functions"); C++17 and sm_52 features only.
//
// Work split. A block serves one (chunk, kv head, tile of the query heads of
// that kv head, tile of the chunk's query tokens). Its kM query rows are
// (token, head) pairs, token-major: hq = min(group, kM) heads of the group
// times tq = kM / hq tokens, so under GQA one staged K/V tile serves every
// query head that shares it. Grid x runs over the token tiles from the last
// (longest causal prefix) to the first, so the longest blocks start first.
//
// Inside a block (flash attention, FP32 throughout). Q is staged once into
// shared memory as FP32, pre-multiplied by log2(e)/sqrt(head_dim) so the
// softmax uses exp2. The block's keys [0, pos + t0 + tq) go in tiles of kN;
// each tile is staged into one shared buffer, K then V, widened from FP16
// once while staging (Maxwell converts at a quarter of the FMA rate, so
// widening on every use would cost more than the products). Per tile:
//   1. S = Q K^T: each thread owns kTR1 rows x kTK1 keys and loops over the
//      dims four at a time (128-bit shared loads); rows and keys are strided
//      by the number of thread groups so that the lanes of a warp read
//      different banks. Only tiles that reach past the block's first query
//      position are masked (key > row position -> -inf).
//   2. Online softmax in registers: a row's kN / kTK1 key threads are
//      adjacent lanes, so the tile max is a few xor shuffles. P = exp2(S - m)
//      goes to shared memory with each row's rescale factor alpha.
//   3. O = alpha O + P V: each thread owns kTR2 rows x kTD2 dims.
// The next tile's FP16 words are loaded into registers while the current
// tile computes (V during step 1, the next K during step 3), so global
// latency hides behind the arithmetic. At the end each row is divided by its
// sum of probabilities. Shapes per padded head dim (kD = 32, 64, 128, 256;
// other head dims run on the next size with zero dims) are in
// PrefillConfig; all fit Maxwell's 48 KB of static shared memory per block
// with two blocks per SM (96 KB on the M40).
#pragma once

#if !defined(__CUDACC__)
#error "cuda/attention_prefill_device.cuh is for CUDA sources only"
#endif

#include <cmath>
#include <cstdint>

#include "cuda/kernel_util.h"

namespace m40llm::gpu::attention_prefill {

using internal::kWarpSize;

inline constexpr int kThreads = 128;  // threads per block (4 warps)

// Tile shapes for a padded head dim kD. kM query rows per block, kN keys per
// tile; step 1 gives each thread kTR1 rows x kTK1 keys, step 3 kTR2 rows x
// kTD2 dims (a multiple of 4: float4 columns).
template <int kD>
struct PrefillConfig;
template <>
struct PrefillConfig<32> {
  static constexpr int kM = 64, kN = 32, kTR1 = 4, kTK1 = 4, kTR2 = 4, kTD2 = 4;
};
template <>
struct PrefillConfig<64> {
  static constexpr int kM = 64, kN = 32, kTR1 = 4, kTK1 = 4, kTR2 = 4, kTD2 = 8;
};
template <>
struct PrefillConfig<128> {
  static constexpr int kM = 64, kN = 16, kTR1 = 4, kTK1 = 2, kTR2 = 8, kTD2 = 8;
};
template <>
struct PrefillConfig<256> {
  static constexpr int kM = 16, kN = 16, kTR1 = 1, kTK1 = 2, kTR2 = 4, kTD2 = 8;
};

// Row strides of the shared tiles, in floats. +4 shifts consecutive rows by
// one 16-byte bank group (conflict-free 128-bit loads of 8 rows); the P row
// stride kN + 8 makes the stores of 4 rows x 8 keys per warp conflict-free.
template <int kD>
struct PrefillLayout {
  using C = PrefillConfig<kD>;
  static constexpr int kQStride = kD + 4;
  static constexpr int kKVStride = kD + 4;
  static constexpr int kPStride = C::kN + 8;
  static constexpr int kSmemFloats =
      C::kM * kQStride + C::kN * kKVStride + C::kM * kPStride + 2 * C::kM;
  static constexpr int kKeyGroups = C::kN / C::kTK1;  // threads sharing a row in step 1
  static constexpr int kRowGroups1 = C::kM / C::kTR1;
  static constexpr int kDimGroups = kD / C::kTD2;  // threads sharing a row in step 3
  static constexpr int kRowGroups2 = C::kM / C::kTR2;
  static constexpr int kChunksPerRow = kD / 8;  // 16-byte words of FP16 per K/V row
  static constexpr int kStageWords = C::kN * kChunksPerRow / kThreads;  // per thread

  static_assert(kKeyGroups * kRowGroups1 == kThreads, "step 1 covers the S tile");
  static_assert(kDimGroups * kRowGroups2 == kThreads, "step 3 covers the O tile");
  static_assert(kKeyGroups <= kWarpSize && (kKeyGroups & (kKeyGroups - 1)) == 0 &&
                    kThreads % kWarpSize == 0,
                "a row's key threads are a power-of-two group of lanes of one warp");
  static_assert(C::kTD2 % 4 == 0 && C::kN % 4 == 0 && kD % 8 == 0, "float4 columns");
  static_assert(C::kN * kChunksPerRow % kThreads == 0, "the block stages whole tiles");
  static_assert(kSmemFloats * sizeof(float) <= 48 * 1024,
                "Maxwell allows 48 KB of static shared memory per block");
};

__device__ __forceinline__ float Dot4(const float4& a, const float4& b, float acc) {
  acc = fmaf(a.x, b.x, acc);
  acc = fmaf(a.y, b.y, acc);
  acc = fmaf(a.z, b.z, acc);
  return fmaf(a.w, b.w, acc);
}

__device__ __forceinline__ void Axpy4(float a, const float4& x, float4& y) {
  y.x = fmaf(a, x.x, y.x);
  y.y = fmaf(a, x.y, y.y);
  y.z = fmaf(a, x.z, y.z);
  y.w = fmaf(a, x.w, y.w);
}

__device__ __forceinline__ float Component(const float4& v, int k) {
  return k == 0 ? v.x : k == 1 ? v.y : k == 2 ? v.z : v.w;
}

// This thread's FP16 words of keys [0, n_keys) of a K or V tile whose key 0
// is at `rows` (row stride head_dim); words past n_keys or head_dim are zeros
// (padding, never read from global memory).
template <int kD>
__device__ __forceinline__ void LoadTile(uint4 (&words)[PrefillLayout<kD>::kStageWords],
                                         const uint16_t* rows, int n_keys, int head_dim) {
  using L = PrefillLayout<kD>;
#pragma unroll
  for (int i = 0; i < L::kStageWords; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * kThreads;
    const int key = c / L::kChunksPerRow;
    const int d0 = (c % L::kChunksPerRow) * 8;
    words[i] = make_uint4(0, 0, 0, 0);
    if (key < n_keys && d0 < head_dim) {
      words[i] =
          __ldg(reinterpret_cast<const uint4*>(rows + static_cast<int64_t>(key) * head_dim + d0));
    }
  }
}

// Widens the words of LoadTile into the shared K/V tile (kN, kKVStride).
template <int kD>
__device__ __forceinline__ void StoreTile(const uint4 (&words)[PrefillLayout<kD>::kStageWords],
                                          float* s_kv) {
  using L = PrefillLayout<kD>;
#pragma unroll
  for (int i = 0; i < L::kStageWords; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * kThreads;
    const int key = c / L::kChunksPerRow;
    const int d0 = (c % L::kChunksPerRow) * 8;
    float f[8];
    internal::UnpackHalf8(words[i], f);
    float4* dst = reinterpret_cast<float4*>(s_kv + key * L::kKVStride + d0);
    dst[0] = make_float4(f[0], f[1], f[2], f[3]);
    dst[1] = make_float4(f[4], f[5], f[6], f[7]);
  }
}

// Shared memory of PrefillAttentionBlock (at most 48 KB, PrefillLayout).
template <int kD>
struct PrefillAttentionShared {
  using C = PrefillConfig<kD>;
  using L = PrefillLayout<kD>;
  __align__(16) float s_q[C::kM * L::kQStride];    // scaled Q rows, zero padding
  __align__(16) float s_kv[C::kN * L::kKVStride];  // K tile, then V tile
  __align__(16) float s_p[C::kM * L::kPStride];    // exp2(S - running max)
  float s_alpha[C::kM];                            // this tile's rescale per row
  float s_l[C::kM];                                // final sum per row
};

// Query token tile qt (tokens [qt * tq, + tq) of the chunk) of chunk `chunk`
// for head tile `head_item` (kv head head_item / head_tiles, its query heads
// from (head_item % head_tiles) * hq), by the kThreads threads of one block
// (it contains __syncthreads(); its early returns are block-uniform and come
// before any barrier). The chunk's first token tile (qt == 0) writes the NaN
// rows of an unreadable chunk.
template <int kD>
__device__ __forceinline__ void PrefillAttentionBlock(
    int qt, int head_item, int chunk,
    const float* __restrict__ q,             // (n_tok, n_head, head_dim)
    const int32_t* __restrict__ chunk_slot,  // (n_chunks)
    const int32_t* __restrict__ chunk_pos,   // (n_chunks)
    const int32_t* __restrict__ chunk_len,   // (n_chunks)
    const int32_t* __restrict__ chunk_row,   // (n_chunks)
    const uint16_t* __restrict__ k_cache,    // (slots, n_head_kv, ctx, hd)
    const uint16_t* __restrict__ v_cache,    // (slots, n_head_kv, ctx, hd)
    int64_t n_tok, int n_head, int n_head_kv, int head_dim, int group, int hq, int tq,
    int head_tiles, int max_chunk_len, int max_context, int max_slots, int ctx_per_slot,
    float q_scale,
    float* __restrict__ out,  // (n_tok, n_head, head_dim)
    PrefillAttentionShared<kD>& shared) {
  using C = PrefillConfig<kD>;
  using L = PrefillLayout<kD>;
  constexpr int kM = C::kM, kN = C::kN;
  constexpr int kTR1 = C::kTR1, kTK1 = C::kTK1, kTR2 = C::kTR2, kTD2 = C::kTD2;
  constexpr int kCols = kTD2 / 4;  // float4 columns per thread in step 3

  float* s_q = shared.s_q;
  float* s_kv = shared.s_kv;
  float* s_p = shared.s_p;
  float* s_alpha = shared.s_alpha;
  float* s_l = shared.s_l;

  const int kv_head = head_item / head_tiles;
  const int h0 = kv_head * group + (head_item % head_tiles) * hq;
  const int n_h = min(hq, (kv_head + 1) * group - h0);  // real heads in this tile
  const int t0 = qt * tq;

  const int slot = __ldg(chunk_slot + chunk);
  const int pos = __ldg(chunk_pos + chunk);
  const int len = __ldg(chunk_len + chunk);
  const int row = __ldg(chunk_row + chunk);
  // A chunk must name rows of its own before anything is written for it.
  if (row < 0 || len < 0 || static_cast<int64_t>(row) + len > n_tok) return;
  const int64_t limit = min(ctx_per_slot, max_context);
  if (slot < 0 || slot >= max_slots || pos < 0 || len > max_chunk_len ||
      static_cast<int64_t>(pos) + len > limit) {
    // Unreadable chunk: the first token tile's block marks all its rows.
    if (qt == 0) {
      const int64_t n = static_cast<int64_t>(len) * n_h * head_dim;
      for (int64_t i = threadIdx.x; i < n; i += kThreads) {
        const int64_t t = i / (n_h * head_dim);
        const int rest = static_cast<int>(i - t * n_h * head_dim);
        out[((row + t) * n_head + h0) * head_dim + rest] = NAN;
      }
    }
    return;
  }
  if (t0 >= len) return;  // block-uniform, before any barrier
  const int tq_eff = min(tq, len - t0);
  const int n_keys = pos + t0 + tq_eff;  // keys [0, n_keys) of the slot
  const int first_pos = pos + t0;        // the smallest query position of the block

  const int tid = threadIdx.x;
  const int64_t head_stride = static_cast<int64_t>(ctx_per_slot) * head_dim;
  const int64_t kv_off = (static_cast<int64_t>(slot) * n_head_kv + kv_head) * head_stride;
  const uint16_t* k_rows = k_cache + kv_off;
  const uint16_t* v_rows = v_cache + kv_off;

  // Stage Q: row r is token t0 + r / hq, head h0 + r % hq; rows past the
  // tile and dims past head_dim are zeros.
  for (int c = tid; c < kM * (kD / 4); c += kThreads) {
    const int r = c / (kD / 4);
    const int d = (c % (kD / 4)) * 4;
    const int ti = r / hq;
    const int hi = r - ti * hq;
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (ti < tq_eff && hi < n_h && d < head_dim) {
      const int64_t qrow = (static_cast<int64_t>(row) + t0 + ti) * n_head + h0 + hi;
      v = __ldg(reinterpret_cast<const float4*>(q + qrow * head_dim + d));
      v.x *= q_scale;
      v.y *= q_scale;
      v.z *= q_scale;
      v.w *= q_scale;
    }
    *reinterpret_cast<float4*>(s_q + r * L::kQStride + d) = v;
  }

  // Step 1 and 2 ownership: rows rg1 + i * kRowGroups1, keys kg + j * kKeyGroups.
  const int kg = tid % L::kKeyGroups;
  const int rg1 = tid / L::kKeyGroups;
  int row_pos[kTR1];  // query position of each row; padding rows take a real one
  float m_run[kTR1];  // running max of the scaled scores (log2 units)
  float l_run[kTR1];  // this thread's part of the running sum of exp2(s - m_run)
#pragma unroll
  for (int i = 0; i < kTR1; ++i) {
    const int r = rg1 + i * L::kRowGroups1;
    row_pos[i] = first_pos + min(r / hq, tq_eff - 1);
    m_run[i] = -INFINITY;
    l_run[i] = 0.0f;
  }
  // Step 3 ownership: rows rg2 + i * kRowGroups2, dims (dg + c * kDimGroups) * 4.
  const int dg = tid % L::kDimGroups;
  const int rg2 = tid / L::kDimGroups;
  float4 o[kTR2][kCols];
#pragma unroll
  for (int i = 0; i < kTR2; ++i) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) o[i][c] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }

  uint4 words[L::kStageWords];  // the next K or V tile in flight, FP16
  LoadTile<kD>(words, k_rows, min(kN, n_keys), head_dim);
  StoreTile<kD>(words, s_kv);

  for (int tile0 = 0; tile0 < n_keys; tile0 += kN) {
    const int tile_keys = min(kN, n_keys - tile0);
    __syncthreads();  // s_kv holds this K tile; s_q staged; step 3 of the last tile done
    LoadTile<kD>(words, v_rows + static_cast<int64_t>(tile0) * head_dim, tile_keys, head_dim);

    // 1. Scores (already scaled through Q).
    float s[kTR1][kTK1];
#pragma unroll
    for (int i = 0; i < kTR1; ++i) {
#pragma unroll
      for (int j = 0; j < kTK1; ++j) s[i][j] = 0.0f;
    }
#pragma unroll 4
    for (int d = 0; d < kD; d += 4) {
      float4 qv[kTR1];
      float4 kv[kTK1];
#pragma unroll
      for (int i = 0; i < kTR1; ++i) {
        qv[i] =
            *reinterpret_cast<const float4*>(s_q + (rg1 + i * L::kRowGroups1) * L::kQStride + d);
      }
#pragma unroll
      for (int j = 0; j < kTK1; ++j) {
        kv[j] =
            *reinterpret_cast<const float4*>(s_kv + (kg + j * L::kKeyGroups) * L::kKVStride + d);
      }
#pragma unroll
      for (int i = 0; i < kTR1; ++i) {
#pragma unroll
        for (int j = 0; j < kTK1; ++j) s[i][j] = Dot4(qv[i], kv[j], s[i][j]);
      }
    }
    // Causal mask, only where the tile reaches past the first query
    // position (the diagonal tiles and the partial last tile: its staged
    // zero keys lie past every row's position).
    if (tile0 + kN - 1 > first_pos) {
#pragma unroll
      for (int i = 0; i < kTR1; ++i) {
#pragma unroll
        for (int j = 0; j < kTK1; ++j) {
          if (tile0 + kg + j * L::kKeyGroups > row_pos[i]) s[i][j] = -INFINITY;
        }
      }
    }

    // 2. Online softmax. Key 0 is visible to every row, so m_run is finite
    // from the first tile on and exp2(-inf - m) is a clean 0.
#pragma unroll
    for (int i = 0; i < kTR1; ++i) {
      const int r = rg1 + i * L::kRowGroups1;
      float mx = s[i][0];
#pragma unroll
      for (int j = 1; j < kTK1; ++j) mx = fmaxf(mx, s[i][j]);
#pragma unroll
      for (int offset = 1; offset < L::kKeyGroups; offset *= 2) {
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, offset));
      }
      const float m_new = fmaxf(m_run[i], mx);
      const float alpha = exp2f(m_run[i] - m_new);  // 0 on the first tile
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kTK1; ++j) {
        const float p = exp2f(s[i][j] - m_new);
        s_p[r * L::kPStride + kg + j * L::kKeyGroups] = p;
        sum += p;
      }
      l_run[i] = fmaf(l_run[i], alpha, sum);
      m_run[i] = m_new;
      if (kg == 0) s_alpha[r] = alpha;
    }
    __syncthreads();  // P and alpha published; every thread is done with the K tile

    StoreTile<kD>(words, s_kv);  // the V tile
    if (tile0 + kN < n_keys) {
      LoadTile<kD>(words, k_rows + static_cast<int64_t>(tile0 + kN) * head_dim,
                   min(kN, n_keys - tile0 - kN), head_dim);
    }
    __syncthreads();  // V visible

    // 3. O = alpha O + P V.
#pragma unroll
    for (int i = 0; i < kTR2; ++i) {
      const float alpha = s_alpha[rg2 + i * L::kRowGroups2];
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        o[i][c].x *= alpha;
        o[i][c].y *= alpha;
        o[i][c].z *= alpha;
        o[i][c].w *= alpha;
      }
    }
#pragma unroll
    for (int j = 0; j < kN; j += 4) {
      float4 p[kTR2];
#pragma unroll
      for (int i = 0; i < kTR2; ++i) {
        p[i] = *reinterpret_cast<const float4*>(s_p + (rg2 + i * L::kRowGroups2) * L::kPStride + j);
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        float4 v[kCols];
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
          v[c] = *reinterpret_cast<const float4*>(s_kv + (j + k) * L::kKVStride +
                                                  (dg + c * L::kDimGroups) * 4);
        }
#pragma unroll
        for (int i = 0; i < kTR2; ++i) {
          const float pk = Component(p[i], k);
#pragma unroll
          for (int c = 0; c < kCols; ++c) Axpy4(pk, v[c], o[i][c]);
        }
      }
    }
    __syncthreads();                                      // done with the V tile, P and alpha
    if (tile0 + kN < n_keys) StoreTile<kD>(words, s_kv);  // the next K tile
  }

  // Each row's sum over its key threads (adjacent lanes), then publish.
#pragma unroll
  for (int i = 0; i < kTR1; ++i) {
    float l = l_run[i];
#pragma unroll
    for (int offset = 1; offset < L::kKeyGroups; offset *= 2) {
      l += __shfl_xor_sync(0xffffffffu, l, offset);
    }
    if (kg == 0) s_l[rg1 + i * L::kRowGroups1] = l;
  }
  __syncthreads();

#pragma unroll
  for (int i = 0; i < kTR2; ++i) {
    const int r = rg2 + i * L::kRowGroups2;
    const int ti = r / hq;
    const int hi = r - ti * hq;
    if (ti >= tq_eff || hi >= n_h) continue;
    const float inv = 1.0f / s_l[r];
    float* dst = out + ((static_cast<int64_t>(row) + t0 + ti) * n_head + h0 + hi) * head_dim;
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int d = (dg + c * L::kDimGroups) * 4;
      if (d < head_dim) {
        *reinterpret_cast<float4*>(dst + d) =
            make_float4(o[i][c].x * inv, o[i][c].y * inv, o[i][c].z * inv, o[i][c].w * inv);
      }
    }
  }
}

}  // namespace m40llm::gpu::attention_prefill
