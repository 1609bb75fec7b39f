// Tiled FP16-weight GEMM for prefill and the LaunchMatMulF16 dispatcher (see
// gemm.cuh).
//
// The kernel is a thin wrapper over gemm_device.cuh, which describes the
// tiling, the summation order and the Maxwell budget.
#include <algorithm>
#include <cstdint>

#include "cuda/cuda_check.h"
#include "cuda/gemm.cuh"
#include "cuda/gemm_device.cuh"
#include "cuda/kernel_util.h"
#include "cuda/matvec.cuh"

namespace m40llm::gpu {
namespace {

using gemm::TileShape;

// The scalar path's 64-bit addressing needs more registers than the 16-byte
// path; it is for odd shapes only, so it gets them (two blocks per SM).
template <int BM, int BN, int TM, int TN, bool kVec>
__global__ void __launch_bounds__(TileShape<BM, BN, TM, TN>::kThreads,
                                  kVec ? TileShape<BM, BN, TM, TN>::kMinBlocks : 2)
    GemmF16Kernel(const uint16_t* __restrict__ w,  // (rows, ld) FP16
                  int64_t rows, int64_t cols, int64_t ld,
                  const float* __restrict__ x,  // (n_tok, cols)
                  int64_t n_tok,
                  float* __restrict__ y,  // (n_tok, rows)
                  int64_t m_blocks, bool y_vec4) {
  __shared__ gemm::GemmShared<BM, BN> shared;
  gemm::GemmF16Block<BM, BN, TM, TN, kVec>(blockIdx.x, w, rows, cols, ld, x, n_tok, y, m_blocks,
                                           y_vec4, shared);
}

template <int BM, int BN, int TM, int TN, bool kVec>
absl::Status Launch(const uint16_t* w, int64_t rows, int64_t cols, int64_t ld, const float* x,
                    int64_t n_tok, float* y, cudaStream_t stream) {
  using S = TileShape<BM, BN, TM, TN>;
  const int64_t m_blocks = (n_tok + BM - 1) / BM;
  const int64_t n_blocks = (rows + BN - 1) / BN;
  if (m_blocks * n_blocks > INT32_MAX) {
    return absl::InvalidArgumentError("LaunchGemmF16: shape exceeds the grid");
  }
  const bool y_vec4 = rows % 4 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0;
  GemmF16Kernel<BM, BN, TM, TN, kVec>
      <<<static_cast<unsigned int>(m_blocks * n_blocks), S::kThreads, 0, stream>>>(
          w, rows, cols, ld, x, n_tok, y, m_blocks, y_vec4);
  CUDA_RETURN_IF_LAUNCH_ERROR();
  return absl::OkStatus();
}


// The tile with the least estimated time: blocks spread evenly over the
// SMs, so an SM runs ceil(blocks / SMs) of them one after another, each
// costing its area over the tile's relative efficiency (steady-state rates
// measured on an H200: 64x128 at 0.93 and 64x64 at 0.8 of 128x128). Ties go
// to the larger tile. It counts SMs, not resident blocks, because one 8-warp
// block per SM already ran at full rate there.
GemmTile AutoTile(int64_t rows, int64_t n_tok) {
  const int64_t sms = std::max(internal::DeviceSmCount(), 1);
  struct Option {
    GemmTile tile;
    int64_t bm, bn;
    double efficiency;
  };
  constexpr Option kOptions[] = {{GemmTile::k128x128, 128, 128, 1.0},
                                 {GemmTile::k64x128, 64, 128, 0.93},
                                 {GemmTile::k64x64, 64, 64, 0.8}};
  GemmTile best = GemmTile::k128x128;
  double best_cost = 0;
  for (const Option& o : kOptions) {
    const int64_t blocks = ((n_tok + o.bm - 1) / o.bm) * ((rows + o.bn - 1) / o.bn);
    const double cost = static_cast<double>((blocks + sms - 1) / sms) *
                        static_cast<double>(o.bm * o.bn) / o.efficiency;
    if (best_cost == 0 || cost < best_cost * 0.999) {
      best = o.tile;
      best_cost = cost;
    }
  }
  return best;
}

absl::Status CheckArgs(const uint16_t* w, int64_t rows, int64_t cols, int64_t ld, const float* x,
                       int64_t n_tok, float* y) {
  if (rows < 0 || cols < 0 || n_tok < 0) {
    return absl::InvalidArgumentError("LaunchGemmF16: negative size");
  }
  if (ld < cols) return absl::InvalidArgumentError("LaunchGemmF16: ld < cols");
  if (rows > 0 && n_tok > 0 && (w == nullptr || x == nullptr || y == nullptr)) {
    return absl::InvalidArgumentError("LaunchGemmF16: null pointer");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchGemmF16Tiled(const uint16_t* w, int64_t rows, int64_t cols, int64_t ld,
                                const float* x, int64_t n_tok, float* y, GemmTile tile,
                                cudaStream_t stream) {
  if (absl::Status s = CheckArgs(w, rows, cols, ld, x, n_tok, y); !s.ok()) return s;
  if (tile != GemmTile::kAuto && tile != GemmTile::k128x128 && tile != GemmTile::k64x128 &&
      tile != GemmTile::k64x64) {
    return absl::InvalidArgumentError("LaunchGemmF16Tiled: unknown tile");
  }
  if (rows == 0 || n_tok == 0) return absl::OkStatus();
  if (cols == 0) {
    // An empty dot product: y is all zeros.
    CUDA_RETURN_IF_ERROR(
        cudaMemsetAsync(y, 0, sizeof(float) * static_cast<size_t>(n_tok * rows), stream));
    return absl::OkStatus();
  }
  const bool vec = ld % 8 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0 && cols % 4 == 0 &&
                   reinterpret_cast<uintptr_t>(x) % 16 == 0;
  if (!vec) {
    // Unaligned layouts (odd shapes only; model weights are padded to 8
    // halves) take one scalar-staging kernel, whatever tile was asked for.
    return Launch<64, 64, 4, 8, false>(w, rows, cols, ld, x, n_tok, y, stream);
  }
  if (tile == GemmTile::kAuto) tile = AutoTile(rows, n_tok);
  switch (tile) {
    case GemmTile::k128x128:
      return Launch<128, 128, 8, 8, true>(w, rows, cols, ld, x, n_tok, y, stream);
    case GemmTile::k64x128:
      return Launch<64, 128, 8, 8, true>(w, rows, cols, ld, x, n_tok, y, stream);
    default:
      return Launch<64, 64, 4, 8, true>(w, rows, cols, ld, x, n_tok, y, stream);
  }
}

absl::Status LaunchGemmF16(const uint16_t* w, int64_t rows, int64_t cols, int64_t ld,
                           const float* x, int64_t n_tok, float* y, cudaStream_t stream) {
  return LaunchGemmF16Tiled(w, rows, cols, ld, x, n_tok, y, GemmTile::kAuto, stream);
}

absl::Status LaunchMatMulF16(const uint16_t* w, int64_t rows, int64_t cols, int64_t ld,
                             const float* x, int64_t n_tok, float* y, cudaStream_t stream) {
  if (n_tok <= kMatMulSkinnyMaxTokens) {
    return LaunchMatVecF16(w, rows, cols, ld, x, n_tok, y, stream);
  }
  return LaunchGemmF16(w, rows, cols, ld, x, n_tok, y, stream);
}

}  // namespace m40llm::gpu
