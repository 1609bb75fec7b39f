// Device side of the skinny FP16-weight matrix product: what one block of
// each matvec kernel does, as __device__ functions that the standalone
// kernels (matvec.cu) and the persistent decode kernel both call. Included
// only by .cu files (see cuda/README.md, "Device functions"); C++17 and sm_52
// features only.
//
// Summation order, the same in every kernel here (this is what makes a
// token's result independent of n_tok and of the other tokens): the warp that
// owns a weight row gives lane l the columns 256 s + 8 l + j of each 256-column
// stride s; the lane sums their products with fmaf into one FP32 accumulator
// starting at 0.0f, strides in order and j = 0..7 in order within a stride
// (columns past cols contribute fmaf(0, 0, acc)); then a butterfly over the
// 32 lanes (kernel_util.h WarpSum) gives the total. The kernels differ only in
// how many tokens and rows share each load.
//
// Bandwidth: weights are read with 16-byte loads through the read-only cache,
// every weight byte once per token tile, and enough of them are in flight:
// - 1 token: no shared memory; x comes through L1 (every warp reads the same
//   vector); a warp owns kRows rows and loads kUnroll strides of all of them
//   before its FMAs.
// - 4 or 8 tokens per tile: x for the tile is staged in shared memory a chunk
//   of columns at a time, token-interleaved (one float4 holds 4 tokens' values
//   of one column), so each weight, converted once, feeds kTok FMAs from one
//   or two shared loads and each x float4 feeds kRows rows. The token tiles of
//   one row block are adjacent blocks, so they run together and the weights
//   come from DRAM once per call and from L2 for the other tiles. For 4-token
//   tiles each chunk's first weight loads are issued before its x staging.
// Beyond about 16 tokens this order costs arithmetic efficiency (each lane
// keeps partial sums for all of its rows x tokens, so tiles stay small and
// weights are re-read from L2 per 8-token tile); LaunchMatMulF16 hands more
// than 64 tokens to the GEMM (gemm.cuh).
#pragma once

#if !defined(__CUDACC__)
#error "cuda/matvec_device.cuh is for CUDA sources only"
#endif

#include <cstdint>

#include "cuda/kernel_util.h"

namespace m40llm::gpu::matvec {

using internal::kWarpSize;

inline constexpr int kStride = kWarpSize * 8;  // columns per lane stride

template <int kWarps>
constexpr int BlockThreads() {
  return kWarps * kWarpSize;
}

// Half j (0..7, compile-time after unrolling) of 8 packed FP16 values, as FP32.
__device__ __forceinline__ float HalfOf(const uint4& u, int j) {
  const uint32_t word = j < 2 ? u.x : j < 4 ? u.y : j < 6 ? u.z : u.w;
  return internal::HalfBitsToFloat(static_cast<uint16_t>(j % 2 == 0 ? word & 0xffffu : word >> 16));
}

// Columns [c, c + 8) of a weight row, all inside the row's cols.
template <bool kVec16>
__device__ __forceinline__ uint4 LoadW8(const uint16_t* row, int64_t c) {
  if constexpr (kVec16) {
    return __ldg(reinterpret_cast<const uint4*>(row + c));
  } else {
    const unsigned short* p = reinterpret_cast<const unsigned short*>(row) + c;
    uint32_t h[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) h[j] = __ldg(p + j);
    return make_uint4(h[0] | h[1] << 16, h[2] | h[3] << 16, h[4] | h[5] << 16, h[6] | h[7] << 16);
  }
}

// Columns [c, c + 8) of a weight row whose columns end at n (< c + 8):
// zeros past n, which are never read.
__device__ __forceinline__ uint4 LoadW8Tail(const uint16_t* row, int64_t c, int64_t n) {
  const unsigned short* p = reinterpret_cast<const unsigned short*>(row) + c;
  uint32_t h[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) h[j] = c + j < n ? __ldg(p + j) : 0u;
  return make_uint4(h[0] | h[1] << 16, h[2] | h[3] << 16, h[4] | h[5] << 16, h[6] | h[7] << 16);
}

// x[c, c + 8) of one token, zeros past cols.
__device__ __forceinline__ void LoadX8(const float* __restrict__ x, int64_t c, int64_t cols,
                                       bool x_vec4, float out[8]) {
  if (x_vec4 && c + 8 <= cols) {
    const float4 lo = __ldg(reinterpret_cast<const float4*>(x + c));
    const float4 hi = __ldg(reinterpret_cast<const float4*>(x + c + 4));
    out[0] = lo.x;
    out[1] = lo.y;
    out[2] = lo.z;
    out[3] = lo.w;
    out[4] = hi.x;
    out[5] = hi.y;
    out[6] = hi.z;
    out[7] = hi.w;
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) out[j] = c + j < cols ? __ldg(x + c + j) : 0.0f;
  }
}

// One token, the kWarps warps of row block `row_block` (rows [row_block *
// kWarps * kRows, + kWarps * kRows)). A warp owns kRows consecutive rows; per
// pass each lane loads kUnroll strides x kRows rows of 16 bytes before using
// any of them. No block barrier: a warp without rows returns at once.
template <int kRows, int kUnroll, int kWarps, bool kVec16>
__device__ __forceinline__ void MatVec1Block(int64_t row_block,
                                             const uint16_t* __restrict__ w,  // (rows, ld) FP16
                                             int64_t rows, int64_t cols, int64_t ld,
                                             const float* __restrict__ x,  // (1, cols)
                                             float* __restrict__ y,        // (1, rows)
                                             bool x_vec4) {
  static_assert(kRows <= kWarpSize, "one storing lane per row");
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int64_t row0 = (row_block * kWarps + warp) * kRows;
  if (row0 >= rows) return;  // whole warp; no block barrier below

  // Rows past the end alias the last row: loads stay in bounds and branch-free.
  const uint16_t* wr[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) wr[r] = w + (row0 + r < rows ? row0 + r : rows - 1) * ld;

  float acc[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) acc[r] = 0.0f;

  int64_t c = lane * 8;
  for (; c + kStride * (kUnroll - 1) + 8 <= cols; c += kStride * kUnroll) {
    uint4 raw[kUnroll][kRows];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) raw[u][r] = LoadW8<kVec16>(wr[r], c + kStride * u);
    }
    float xv[kUnroll][8];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) LoadX8(x, c + kStride * u, cols, x_vec4, xv[u]);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        float a = acc[r];
#pragma unroll
        for (int j = 0; j < 8; ++j) a = fmaf(HalfOf(raw[u][r], j), xv[u][j], a);
        acc[r] = a;
      }
    }
  }
  // The last strides, one at a time, the final one possibly partial.
  for (; c < cols; c += kStride) {
    const bool full = c + 8 <= cols;
    uint4 raw[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      raw[r] = full ? LoadW8<kVec16>(wr[r], c) : LoadW8Tail(wr[r], c, cols);
    }
    float xv[8];
    LoadX8(x, c, cols, x_vec4, xv);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float a = acc[r];
#pragma unroll
      for (int j = 0; j < 8; ++j) a = fmaf(HalfOf(raw[r], j), xv[j], a);
      acc[r] = a;
    }
  }

#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float sum = internal::WarpSum(acc[r]);
    if (lane == r && row0 + r < rows) y[row0 + r] = sum;
  }
}

// Position of quad p of a staged chunk (quad p = column p / kQ, tokens
// 4 (p % kQ) .. + 3). In a lane's read of column 8 l + j, the quad index's low
// 3 bits are the same for every lane; XOR-ing them with l's low 3 bits (the
// bits of p just above the lane's 8 kQ quads) gives the 8 lanes of each
// quarter-warp 8 different 16-byte bank groups. It only permutes within
// aligned runs of 8 quads.
template <int kQ>
__device__ __forceinline__ int SwizzledQuad(int p) {
  constexpr int kShift = kQ == 1 ? 3 : 4;  // log2(8 kQ)
  return p ^ ((p >> kShift) & 7);
}

// Minimum resident blocks per SM for a cap of 128 registers per thread.
template <int kWarps>
constexpr int TileMinBlocks() {
  return 65536 / (kWarps * kWarpSize * 128);
}

// Shared memory of MatVecTileBlock: x for the tile's kTok tokens, staged
// 8192 / kTok columns at a time (32 KiB).
template <int kTok>
struct MatVecTileShared {
  float4 xs[8192 / kTok * (kTok / 4)];  // (columns, kTok) swizzled
};

// Work item `item` of n_tiles x row blocks: token tile item % n_tiles
// (tokens [tile * kTok, + kTok), kTok = 4 or 8) of row block item / n_tiles,
// by the kWarps warps of one block (it contains __syncthreads()). A warp owns kRows rows; per pass
// a lane loads kUnroll strides x kRows rows of 16 bytes. x for the tile's tokens is staged kChunk
// columns at a time in `shared`.
template <int kTok, int kRows, int kUnroll, int kWarps, bool kVec16>
__device__ __forceinline__ void MatVecTileBlock(unsigned item, int n_tiles,
                                                const uint16_t* __restrict__ w,  // (rows, ld) FP16
                                                int64_t rows, int64_t cols, int64_t ld,
                                                const float* __restrict__ x,  // (n_tok, cols)
                                                int64_t n_tok,
                                                float* __restrict__ y,  // (n_tok, rows)
                                                MatVecTileShared<kTok>& shared) {
  static_assert(kTok == 4 || kTok == 8, "tiles of 4 or 8 tokens");
  constexpr int kQ = kTok / 4;         // quads per column
  constexpr int kChunk = 8192 / kTok;  // columns per stage: whole strides
  constexpr int kQuads = kChunk * kQ;  // 2048 float4 = 32 KiB
  static_assert(kChunk % kStride == 0, "a chunk is whole lane strides");
  static_assert(sizeof(shared.xs) == kQuads * sizeof(float4), "MatVecTileShared holds a chunk");
  float4* xs = shared.xs;  // (kChunk, kTok) swizzled

  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int64_t row_block = item / n_tiles;
  const int tile = static_cast<int>(item % n_tiles);
  const int64_t row0 = (row_block * kWarps + warp) * kRows;
  const int64_t tok0 = static_cast<int64_t>(tile) * kTok;
  const bool warp_has_rows = row0 < rows;  // warp-uniform

  const uint16_t* wr[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) wr[r] = w + (row0 + r < rows ? row0 + r : rows - 1) * ld;

  float acc[kRows][kTok];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int t = 0; t < kTok; ++t) acc[r][t] = 0.0f;
  }

  // acc[r][*] += the 8 columns of `raw[r]` times the staged x at chunk column c.
  auto fma8 = [&](const uint4(&raw)[kRows], int c) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      float wv[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) wv[r] = HalfOf(raw[r], j);
#pragma unroll
      for (int q = 0; q < kQ; ++q) {
        const float4 xq = xs[SwizzledQuad<kQ>((c + j) * kQ + q)];
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          acc[r][4 * q + 0] = fmaf(wv[r], xq.x, acc[r][4 * q + 0]);
          acc[r][4 * q + 1] = fmaf(wv[r], xq.y, acc[r][4 * q + 1]);
          acc[r][4 * q + 2] = fmaf(wv[r], xq.z, acc[r][4 * q + 2]);
          acc[r][4 * q + 3] = fmaf(wv[r], xq.w, acc[r][4 * q + 3]);
        }
      }
    }
  };

  for (int64_t c0 = 0; c0 < cols; c0 += kChunk) {
    const int n_c = static_cast<int>(cols - c0 < kChunk ? cols - c0 : kChunk);
    // The chunk's first pass of weight loads goes out before the barrier and
    // the x staging, so its DRAM latency overlaps them: 4-token tiles on the
    // 16-byte path, which are bandwidth-bound and have the registers for it.
    constexpr bool kPrefetch = kTok == 4 && kVec16;
    const int c_first = lane * 8;
    const bool first_full =
        kPrefetch && warp_has_rows && c_first + kStride * (kUnroll - 1) + 8 <= n_c;
    uint4 first[kUnroll][kRows];
    if (first_full) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          first[u][r] = LoadW8<kVec16>(wr[r], c0 + c_first + kStride * u);
        }
      }
    }
    __syncthreads();  // every warp is done with the previous chunk
    // Consecutive threads take consecutive columns of one token quad, so the
    // global loads of each token row are coalesced. Zeros past the chunk's
    // columns and past n_tok.
    for (int idx = threadIdx.x; idx < kQuads; idx += kWarps * kWarpSize) {
      const int col = idx % kChunk;
      const int q = idx / kChunk;
      float v[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t t = tok0 + 4 * q + i;
        v[i] = col < n_c && t < n_tok ? __ldg(x + t * cols + c0 + col) : 0.0f;
      }
      xs[SwizzledQuad<kQ>(col * kQ + q)] = make_float4(v[0], v[1], v[2], v[3]);
    }
    __syncthreads();
    if (!warp_has_rows) continue;

    int c = c_first;
    if (first_full) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) fma8(first[u], c + kStride * u);
      c += kStride * kUnroll;
    }
    for (; c + kStride * (kUnroll - 1) + 8 <= n_c; c += kStride * kUnroll) {
      uint4 raw[kUnroll][kRows];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int r = 0; r < kRows; ++r) raw[u][r] = LoadW8<kVec16>(wr[r], c0 + c + kStride * u);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) fma8(raw[u], c + kStride * u);
    }
    for (; c < n_c; c += kStride) {
      const bool full = c + 8 <= n_c;
      uint4 raw[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        raw[r] = full ? LoadW8<kVec16>(wr[r], c0 + c) : LoadW8Tail(wr[r], c0 + c, cols);
      }
      fma8(raw, c);
    }
  }

  if (!warp_has_rows) return;
    // Butterfly sums leave every total in every lane; lane k stores total k so
    // the stores spread over the warp instead of serialising on lane 0.
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int t = 0; t < kTok; ++t) {
      const float sum = internal::WarpSum(acc[r][t]);
      const int k = (r * kTok + t) % kWarpSize;
      if (lane == k && row0 + r < rows && tok0 + t < n_tok) {
        y[(tok0 + t) * rows + row0 + r] = sum;
      }
    }
  }
}

}  // namespace m40llm::gpu::matvec
