// Skinny FP16-weight matrix product kernels and launcher (see matvec.cuh).
//
// The kernels are thin wrappers: their bodies, the summation order that
// makes a token's row batch-invariant and the kernel shapes are described in
// matvec_device.cuh.
#include <cstdint>

#include "cuda/cuda_check.h"
#include "cuda/kernel_util.h"
#include "cuda/matvec.cuh"
#include "cuda/matvec_device.cuh"

namespace m40llm::gpu {
namespace {

using internal::kWarpSize;
using matvec::BlockThreads;
using matvec::TileMinBlocks;

// One token per block: row block blockIdx.x.
template <int kRows, int kUnroll, int kWarps, bool kVec16>
__global__ void __launch_bounds__(BlockThreads<kWarps>())
    MatVec1Kernel(const uint16_t* __restrict__ w,  // (rows, ld) FP16
                  int64_t rows, int64_t cols, int64_t ld,
                  const float* __restrict__ x,  // (1, cols)
                  float* __restrict__ y,        // (1, rows)
                  bool x_vec4) {
  matvec::MatVec1Block<kRows, kUnroll, kWarps, kVec16>(blockIdx.x, w, rows, cols, ld, x, y, x_vec4);
}

// kTok tokens per block: block b is token tile b % n_tiles of row block
// b / n_tiles, so the token tiles of one row block are adjacent blocks.
template <int kTok, int kRows, int kUnroll, int kWarps, bool kVec16>
__global__ void __launch_bounds__(BlockThreads<kWarps>(), TileMinBlocks<kWarps>())
    MatVecTileKernel(const uint16_t* __restrict__ w,  // (rows, ld) FP16
                     int64_t rows, int64_t cols, int64_t ld,
                     const float* __restrict__ x,  // (n_tok, cols)
                     int64_t n_tok,
                     float* __restrict__ y,  // (n_tok, rows)
                     int n_tiles) {
  __shared__ matvec::MatVecTileShared<kTok> shared;
  matvec::MatVecTileBlock<kTok, kRows, kUnroll, kWarps, kVec16>(blockIdx.x, n_tiles, w, rows, cols,
                                                                ld, x, n_tok, y, shared);
}


// Blocks of `kernel` (of `block` threads) resident per SM, or 0 when unknown.
template <typename Kernel>
int BlocksPerSm(Kernel kernel, int block) {
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, block, 0) != cudaSuccess) {
    static_cast<void>(cudaGetLastError());
    return 0;
  }
  return per_sm;
}

template <int kRows, int kUnroll, int kWarps, bool kVec16>
void Launch1(const uint16_t* w, int64_t rows, int64_t cols, int64_t ld, const float* x, float* y,
             cudaStream_t stream) {
  constexpr int64_t kRowsPerBlock = kWarps * kRows;
  const bool x_vec4 = cols % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  const dim3 grid(static_cast<unsigned int>((rows + kRowsPerBlock - 1) / kRowsPerBlock));
  MatVec1Kernel<kRows, kUnroll, kWarps, kVec16>
      <<<grid, kWarps * kWarpSize, 0, stream>>>(w, rows, cols, ld, x, y, x_vec4);
}

template <int kTok, int kRows, int kUnroll, int kWarps, bool kVec16>
void LaunchTiles(const uint16_t* w, int64_t rows, int64_t cols, int64_t ld, const float* x,
                 int64_t n_tok, float* y, cudaStream_t stream) {
  constexpr int64_t kRowsPerBlock = kWarps * kRows;
  const int64_t row_blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  const int n_tiles = static_cast<int>((n_tok + kTok - 1) / kTok);
  const dim3 grid(static_cast<unsigned int>(row_blocks * n_tiles));
  MatVecTileKernel<kTok, kRows, kUnroll, kWarps, kVec16>
      <<<grid, kWarps * kWarpSize, 0, stream>>>(w, rows, cols, ld, x, n_tok, y, n_tiles);
}

// Kernel shapes, measured on an H200 (bench/cuda_kernel_bench.cc): every
// shape keeps 4 KiB of weight loads in flight per warp (rows x strides x
// 512 bytes). One token: 2 rows per warp, unless the warps that needs do not
// all fit on the device at once and 4 rows per warp would (then the single
// wave has no tail). 2..4 tokens likewise with 2 rows per warp in 8-warp
// blocks, else 4 rows in 4-warp blocks. 5+ tokens: 8-token tiles, 4 rows per
// warp in 8-warp blocks (32 rows share each staged x chunk, which halves the
// L2 traffic of staging against 16).
template <bool kVec16>
void LaunchForTokens(const uint16_t* w, int64_t rows, int64_t cols, int64_t ld, const float* x,
                     int64_t n_tok, float* y, cudaStream_t stream) {
  // Occupancy per SM is a property of the compiled kernel: asked once.
  const int64_t sms = internal::DeviceSmCount();
  if (n_tok == 1) {
    static const int per_sm2 = BlocksPerSm(MatVec1Kernel<2, 4, 4, kVec16>, 128);
    static const int per_sm4 = BlocksPerSm(MatVec1Kernel<4, 2, 4, kVec16>, 128);
    if ((rows + 1) / 2 > per_sm2 * 4 * sms && (rows + 3) / 4 <= per_sm4 * 4 * sms) {
      Launch1<4, 2, 4, kVec16>(w, rows, cols, ld, x, y, stream);
    } else {
      Launch1<2, 4, 4, kVec16>(w, rows, cols, ld, x, y, stream);
    }
  } else if (n_tok <= 4) {
    static const int per_sm = BlocksPerSm(MatVecTileKernel<4, 2, 4, 8, kVec16>, 256);
    if ((rows + 1) / 2 <= per_sm * 8 * sms) {
      LaunchTiles<4, 2, 4, 8, kVec16>(w, rows, cols, ld, x, n_tok, y, stream);
    } else {
      LaunchTiles<4, 4, 2, 4, kVec16>(w, rows, cols, ld, x, n_tok, y, stream);
    }
  } else {
    LaunchTiles<8, 4, 2, 8, kVec16>(w, rows, cols, ld, x, n_tok, y, stream);
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
  // The largest grids: 8-row blocks for one token, 16-row blocks x 4-token tiles.
  if ((rows + 7) / 8 > INT32_MAX || (rows + 15) / 16 * ((n_tok + 3) / 4) > INT32_MAX) {
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
