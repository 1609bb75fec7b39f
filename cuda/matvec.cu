// Skinny FP16-weight matrix product kernel and launcher (see matvec.cuh).
//
// Bandwidth-bound for few tokens: every weight byte is read once per token
// tile, 16 bytes (8 halves) per lane per load through the read-only cache,
// kRowsPerWarp independent rows per warp for loads in flight. A block of
// kWarps warps covers kWarps * kRowsPerWarp rows and kTok tokens; it stages
// x for its kTok tokens in shared memory kChunk columns at a time, so shared
// memory stays at 16 KiB (32 KiB for 8-token tiles) whatever cols is. The
// token tiles of one row block are adjacent blocks, so for more than 8 tokens
// the weights come from DRAM once and from L2 for the other tiles. Each lane
// accumulates its columns in FP32, then a warp butterfly sums the lanes.
#include <cstdint>

#include "cuda/cuda_check.h"
#include "cuda/kernel_util.h"
#include "cuda/matvec.cuh"

namespace m40llm::gpu {
namespace {

using internal::kWarpSize;

// Where column w of a staged chunk lives in shared memory on the 16-byte path.
// Lane l reads the 8 columns [8l, 8l + 8) of each 256-column stride as two
// float4. Stored plainly, the 8 lanes of a quarter-warp would span 64 floats
// and collide two to a bank; this permutation puts the first float4 of those
// 8 lanes in one 32-float run and their second float4 in the next, so every
// quarter-warp reads 32 distinct banks.
__device__ __forceinline__ int SwizzledPos(int w) {
  return (w & ~63) | ((w & 4) << 3) | (((w >> 3) & 7) << 2) | (w & 3);
}

// Register budget per thread, as blocks of 128 threads resident per SM
// (64K registers): 4 (<= 128 registers) for token tiles of 4 and 8, 5 (<= 96)
// for 2 and 6 (<= 80) for 1, so occupancy on the M40 does not hinge on the
// compiler's scheduling whims.
template <int kTok>
constexpr int MinBlocksFor() {
  return kTok >= 4 ? 4 : (kTok == 2 ? 5 : 6);
}

template <int kBlock, int kRowsPerWarp, int kTok, int kChunk, bool kVec16>
__global__ void __launch_bounds__(kBlock, MinBlocksFor<kTok>())
    MatVecF16Kernel(const uint16_t* __restrict__ w,  // (rows, ld) FP16
                    int64_t rows, int64_t cols, int64_t ld,
                    const float* __restrict__ x,  // (n_tok, cols)
                    int64_t n_tok,
                    float* __restrict__ y,  // (n_tok, rows)
                    int n_tiles, bool x_vec4) {
  static_assert(kBlock % kWarpSize == 0, "whole warps");
  static_assert(kChunk % 256 == 0, "a chunk is whole 256-column lane strides");
  constexpr int kWarps = kBlock / kWarpSize;
  __shared__ __align__(16) float xs[kTok * kChunk];  // (kTok, kChunk)

  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  // The token tiles of one row block are consecutive blocks, so they run
  // together and all but the first read the block's weights from L2.
  const int64_t row_block = blockIdx.x / n_tiles;
  const int tile = static_cast<int>(blockIdx.x % n_tiles);
  const int64_t row0 = (row_block * kWarps + warp) * kRowsPerWarp;
  const int64_t tok0 = static_cast<int64_t>(tile) * kTok;
  const bool warp_has_rows = row0 < rows;  // warp-uniform

  // Rows past the end alias the last row: their loads stay in bounds and
  // branch-free, and their sums are never stored.
  const uint16_t* wr[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t row = row0 + r < rows ? row0 + r : rows - 1;
    wr[r] = w + row * ld;
  }

  float acc[kRowsPerWarp][kTok];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
    for (int t = 0; t < kTok; ++t) acc[r][t] = 0.0f;
  }

  for (int64_t c0 = 0; c0 < cols; c0 += kChunk) {
    const int n_c = static_cast<int>(cols - c0 < kChunk ? cols - c0 : kChunk);
    __syncthreads();  // every warp is done with the previous chunk
    // Zeros past cols and past n_tok: the tail vector multiplies them by zero
    // weights, and absent tokens accumulate zeros that are never stored.
    if (kTok > 1 && x_vec4) {
      // 16-byte loads; 4 consecutive columns stay consecutive under the swizzle.
      // (One token keeps scalar staging: it is a small share of its work, and
      // the vector path would cost the single-token kernel registers.)
      constexpr int kQuads = kChunk / 4;
      for (int idx = threadIdx.x; idx < kTok * kQuads; idx += kBlock) {
        const int t = idx / kQuads;
        const int c = (idx % kQuads) * 4;
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (tok0 + t < n_tok) {
          const float* src = x + (tok0 + t) * cols + c0 + c;
          if (c + 4 <= n_c) {
            v = __ldg(reinterpret_cast<const float4*>(src));
          } else {
            if (c + 0 < n_c) v.x = __ldg(src + 0);
            if (c + 1 < n_c) v.y = __ldg(src + 1);
            if (c + 2 < n_c) v.z = __ldg(src + 2);
          }
        }
        *reinterpret_cast<float4*>(&xs[t * kChunk + (kVec16 ? SwizzledPos(c) : c)]) = v;
      }
    } else {
      for (int idx = threadIdx.x; idx < kTok * kChunk; idx += kBlock) {
        const int t = idx / kChunk;
        const int c = idx % kChunk;
        float v = 0.0f;
        if (c < n_c && tok0 + t < n_tok) v = x[(tok0 + t) * cols + c0 + c];
        xs[t * kChunk + (kVec16 ? SwizzledPos(c) : c)] = v;
      }
    }
    __syncthreads();
    if (!warp_has_rows) continue;

    if constexpr (kVec16) {
      for (int c = lane * 8; c < n_c; c += kWarpSize * 8) {
        float wf[kRowsPerWarp][8];
        if (c + 8 <= n_c) {
#pragma unroll
          for (int r = 0; r < kRowsPerWarp; ++r) {
            const uint4 u = __ldg(reinterpret_cast<const uint4*>(wr[r] + c0 + c));
            internal::UnpackHalf8(u, wf[r]);
          }
        } else {
          // Tail: the last 1..7 columns of a row whose cols is not a multiple of 8.
#pragma unroll
          for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
            for (int j = 0; j < 8; ++j) {
              wf[r][j] = c + j < n_c ? internal::LoadHalf(wr[r] + c0 + c + j) : 0.0f;
            }
          }
        }
        const int p = SwizzledPos(c);
#pragma unroll
        for (int t = 0; t < kTok; ++t) {
          const float4 lo = *reinterpret_cast<const float4*>(&xs[t * kChunk + p]);
          const float4 hi = *reinterpret_cast<const float4*>(&xs[t * kChunk + p + 32]);
          const float xv[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
          for (int r = 0; r < kRowsPerWarp; ++r) {
            float a = acc[r][t];
#pragma unroll
            for (int j = 0; j < 8; ++j) a = fmaf(wf[r][j], xv[j], a);
            acc[r][t] = a;
          }
        }
      }
    } else {
      // Rows not 16-byte aligned: 2-byte loads, still coalesced across the warp.
      for (int c = lane; c < n_c; c += kWarpSize) {
        float wf[kRowsPerWarp];
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) wf[r] = internal::LoadHalf(wr[r] + c0 + c);
#pragma unroll
        for (int t = 0; t < kTok; ++t) {
          const float xv = xs[t * kChunk + c];
#pragma unroll
          for (int r = 0; r < kRowsPerWarp; ++r) acc[r][t] = fmaf(wf[r], xv, acc[r][t]);
        }
      }
    }
  }

  if (!warp_has_rows) return;
    // Butterfly sums leave every total in every lane; lane k stores total k so
    // the stores spread over the warp instead of serialising on lane 0.
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
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

constexpr int kMatVecBlock = 128;
constexpr int kMatVecRowsPerWarp = 4;
constexpr int kMatVecRowsPerBlock = kMatVecBlock / kWarpSize * kMatVecRowsPerWarp;

// Shared memory per block: kTok * kChunk floats, 16 KiB up to 4 tokens and
// 32 KiB for 8 (4 lane strides a chunk, as for 4: fewer block barriers and
// x stagings per weight byte).
template <int kTok>
constexpr int ChunkFor() {
  return kTok == 8 ? 1024 : 4096 / kTok;
}

template <int kTok, bool kVec16>
void Launch(const uint16_t* w, int64_t rows, int64_t cols, int64_t ld, const float* x,
            int64_t n_tok, float* y, cudaStream_t stream) {
  constexpr int kChunk = ChunkFor<kTok>();
  const int64_t row_blocks = (rows + kMatVecRowsPerBlock - 1) / kMatVecRowsPerBlock;
  const int n_tiles = static_cast<int>((n_tok + kTok - 1) / kTok);
  const bool x_vec4 = cols % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  const dim3 grid(static_cast<unsigned int>(row_blocks * n_tiles));
  MatVecF16Kernel<kMatVecBlock, kMatVecRowsPerWarp, kTok, kChunk, kVec16>
      <<<grid, kMatVecBlock, 0, stream>>>(w, rows, cols, ld, x, n_tok, y, n_tiles, x_vec4);
}

template <bool kVec16>
void LaunchForTokens(const uint16_t* w, int64_t rows, int64_t cols, int64_t ld, const float* x,
                     int64_t n_tok, float* y, cudaStream_t stream) {
  if (n_tok == 1) {
    Launch<1, kVec16>(w, rows, cols, ld, x, n_tok, y, stream);
  } else if (n_tok == 2) {
    Launch<2, kVec16>(w, rows, cols, ld, x, n_tok, y, stream);
  } else if (n_tok <= 4) {
    Launch<4, kVec16>(w, rows, cols, ld, x, n_tok, y, stream);
  } else {
    Launch<8, kVec16>(w, rows, cols, ld, x, n_tok, y, stream);
  }
}

}  // namespace

absl::Status LaunchMatVecF16(const uint16_t* w, int64_t rows, int64_t cols, int64_t ld,
                             const float* x, int64_t n_tok, float* y, cudaStream_t stream) {
  if (rows < 0 || cols < 0 || n_tok < 0) {
    return absl::InvalidArgumentError("LaunchMatVecF16: negative size");
  }
  if (ld < cols) return absl::InvalidArgumentError("LaunchMatVecF16: ld < cols");
  if (rows == 0 || n_tok == 0) return absl::OkStatus();
  if (w == nullptr || x == nullptr || y == nullptr) {
    return absl::InvalidArgumentError("LaunchMatVecF16: null pointer");
  }
  if ((rows + kMatVecRowsPerBlock - 1) / kMatVecRowsPerBlock > INT32_MAX ||
      (n_tok + 7) / 8 > 65535 ||
      (rows + kMatVecRowsPerBlock - 1) / kMatVecRowsPerBlock * ((n_tok + 7) / 8) > INT32_MAX) {
    return absl::InvalidArgumentError("LaunchMatVecF16: shape exceeds the grid");
  }
  if (cols == 0) {
    // An empty dot product: y is all zeros.
    CUDA_RETURN_IF_ERROR(
        cudaMemsetAsync(y, 0, sizeof(float) * static_cast<size_t>(n_tok * rows), stream));
    return absl::OkStatus();
  }
  const bool vec16 = ld % kMatVecRowAlignHalves == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
  if (vec16) {
    LaunchForTokens<true>(w, rows, cols, ld, x, n_tok, y, stream);
  } else {
    LaunchForTokens<false>(w, rows, cols, ld, x, n_tok, y, stream);
  }
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}

}  // namespace m40llm::gpu
