// Device side of the tiled FP16-weight GEMM: what one block of the GEMM
// kernel does, as a __device__ function that the standalone kernel (gemm.cu)
// and the persistent decode kernel can both call. Included only by .cu files
// (see cuda/README.md, "Device functions"); C++17 and sm_52 features only.
//
// C (n_tok, rows) = X (n_tok, cols) * W^T with both operands k-contiguous. A
// block computes a BM x BN tile (tokens x weight rows) and walks k in steps of
// kBK = 16: each step's X tile (BM x 16 floats) and W tile (BN x 16 halves,
// widened to FP32 on the way in) are stored k-major in shared memory, so a
// thread reads its 4-wide fragments as float4 and does TM x TN FMAs per k from
// registers (outer product). Double buffering: while a step is computed from
// one shared buffer, the next step's global loads are already in registers,
// and they are stored to the other buffer before the step's single barrier.
// Every output element is one FMA chain over k = 0, 1, ..., cols - 1 from
// 0.0f (columns past cols add 0 * 0), whatever the tile, so results never
// depend on the tile or on the other tokens.
//
// Maxwell budget (64K registers and 96 KB shared memory per SM, 48 KB per
// block): 128x128 tiles run 256 threads at <= 128 registers, two blocks per
// SM (33 KB of shared memory each); 64x128 runs 128 threads at <= 168
// registers (three blocks), 64x64 128 threads at <= 128 (four). None spills
// on sm_52 (scripts/maxwell-check.sh).
#pragma once

#if !defined(__CUDACC__)
#error "cuda/gemm_device.cuh is for CUDA sources only"
#endif

#include <cstdint>

#include "cuda/kernel_util.h"

namespace m40llm::gpu::gemm {

inline constexpr int kBK = 16;  // k per pipeline step
inline constexpr int kPad = 4;  // floats of padding per shared row (keeps float4 alignment)

// Zeroes the halves [valid, 8) of 8 packed FP16 values (columns past cols,
// which may hold anything, NaN included).
__device__ __forceinline__ void MaskHalves(uint4& u, int valid) {
  uint32_t words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (2 * k >= valid) {
      words[k] = 0;
    } else if (2 * k + 1 >= valid) {
      words[k] &= 0xffffu;
    }
  }
  u = make_uint4(words[0], words[1], words[2], words[3]);
}

template <int BM, int BN, int TM, int TN>
struct TileShape {
  static_assert(TM % 4 == 0 && TN % 4 == 0, "fragments are float4 groups");
  static constexpr int kThreads = (BM / TM) * (BN / TN);
  static constexpr int kTx = BN / TN;  // threads along weight rows
  static constexpr int kMGroups = TM / 4;
  static constexpr int kNGroups = TN / 4;
  static constexpr int kMStride = BM / kMGroups;  // tokens between a thread's groups
  static constexpr int kNStride = BN / kNGroups;  // rows between a thread's groups
  // Global -> register staging per thread and step on the 16-byte path: X
  // as float4 along k, W as 8 halves along k.
  static constexpr int kXVec = BM * kBK / 4 / kThreads;
  static constexpr int kWVec = BN * kBK / 8 / kThreads;
  static_assert(BM * kBK / 4 % kThreads == 0 && BN * kBK / 8 % kThreads == 0,
                "whole staging loads per thread");
  // Resident blocks per SM for the register cap: 256 threads with 8x8 tiles
  // fit 128 registers (2 blocks), 128 threads with 8x8 get 168 (3), with
  // 4x8 128 (4).
  static constexpr int kMinBlocks = kThreads >= 256 ? 2 : (TM * TN >= 64 ? 3 : 4);
};

// Staged operands of one k step, in registers between the global load and
// the shared store. Init fixes each thread's source rows once; rows past the
// end are clamped to the last row (their products only reach outputs that are
// never stored), so only columns past cols need zeros, in the last step.
template <int BM, int BN, int TM, int TN, bool kVec>
struct Stage;

// 16-byte path: 4 threads read one token's 16 floats (64 contiguous bytes),
// 2 threads one weight row's 16 halves (a 32-byte sector).
template <int BM, int BN, int TM, int TN>
struct Stage<BM, BN, TM, TN, true> {
  using S = TileShape<BM, BN, TM, TN>;
  static_assert(S::kThreads % 4 == 0, "a thread's k offset is the same in every slot");
  const float* xp[S::kXVec];     // token row + this thread's k offset
  const uint16_t* wp[S::kWVec];  // weight row + this thread's k offset
  float4 xv[S::kXVec];
  uint4 wv[S::kWVec];

  static __device__ __forceinline__ int XK() { return static_cast<int>(threadIdx.x % 4) * 4; }
  static __device__ __forceinline__ int WK() { return static_cast<int>(threadIdx.x % 2) * 8; }

  __device__ __forceinline__ void Init(const uint16_t* __restrict__ w, int64_t rows, int64_t cols,
                                       int64_t ld, const float* __restrict__ x, int64_t n_tok,
                                       int64_t m0, int64_t n0) {
#pragma unroll
    for (int i = 0; i < S::kXVec; ++i) {
      const int64_t gm = m0 + (threadIdx.x + i * S::kThreads) / 4;
      xp[i] = x + (gm < n_tok ? gm : n_tok - 1) * cols + XK();
    }
#pragma unroll
    for (int i = 0; i < S::kWVec; ++i) {
      const int64_t gn = n0 + (threadIdx.x + i * S::kThreads) / 2;
      wp[i] = w + (gn < rows ? gn : rows - 1) * ld + WK();
    }
  }

  __device__ __forceinline__ void Load(int64_t k0, int64_t cols) {
    if (k0 + kBK <= cols) {
#pragma unroll
      for (int i = 0; i < S::kXVec; ++i) xv[i] = __ldg(reinterpret_cast<const float4*>(xp[i] + k0));
#pragma unroll
      for (int i = 0; i < S::kWVec; ++i) wv[i] = __ldg(reinterpret_cast<const uint4*>(wp[i] + k0));
      return;
    }
    // The last step of a cols that is not a multiple of 16. cols % 4 == 0
    // here, so a float4 is wholly inside or outside; ld % 8 == 0 and
    // k < cols <= ld keep all 8 halves of a weight load inside the row.
    const int64_t kx = k0 + XK();
    const int64_t kw = k0 + WK();
#pragma unroll
    for (int i = 0; i < S::kXVec; ++i) {
      xv[i] = kx < cols ? __ldg(reinterpret_cast<const float4*>(xp[i] + k0))
                        : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int i = 0; i < S::kWVec; ++i) {
      uint4 u = make_uint4(0u, 0u, 0u, 0u);
      if (kw < cols) {
        u = __ldg(reinterpret_cast<const uint4*>(wp[i] + k0));
        if (kw + 8 > cols) MaskHalves(u, static_cast<int>(cols - kw));
      }
      wv[i] = u;
    }
  }

  __device__ __forceinline__ void Store(float (*xs)[BM + kPad], float (*ws)[BN + kPad]) const {
#pragma unroll
    for (int i = 0; i < S::kXVec; ++i) {
      const int m = (threadIdx.x + i * S::kThreads) / 4;
      xs[XK() + 0][m] = xv[i].x;
      xs[XK() + 1][m] = xv[i].y;
      xs[XK() + 2][m] = xv[i].z;
      xs[XK() + 3][m] = xv[i].w;
    }
#pragma unroll
    for (int i = 0; i < S::kWVec; ++i) {
      const int n = (threadIdx.x + i * S::kThreads) / 2;
      float f[8];
      internal::UnpackHalf8(wv[i], f);
#pragma unroll
      for (int j = 0; j < 8; ++j) ws[WK() + j][n] = f[j];
    }
  }
};

// Scalar staging for unaligned layouts (odd shapes only): one element per
// load, k fastest, every load guarded.
template <int BM, int BN, int TM, int TN>
struct Stage<BM, BN, TM, TN, false> {
  using S = TileShape<BM, BN, TM, TN>;
  static constexpr int kXScalar = BM * kBK / S::kThreads;
  static constexpr int kWScalar = BN * kBK / S::kThreads;
  const uint16_t* w;
  const float* x;
  int64_t rows, ld, n_tok, m0, n0;
  float xv[kXScalar];
  float wv[kWScalar];

  __device__ __forceinline__ void Init(const uint16_t* __restrict__ w_, int64_t rows_,
                                       int64_t /*cols*/, int64_t ld_, const float* __restrict__ x_,
                                       int64_t n_tok_, int64_t m0_, int64_t n0_) {
    w = w_;
    x = x_;
    rows = rows_;
    ld = ld_;
    n_tok = n_tok_;
    m0 = m0_;
    n0 = n0_;
  }

  __device__ __forceinline__ void Load(int64_t k0, int64_t cols) {
#pragma unroll
    for (int i = 0; i < kXScalar; ++i) {
      const int idx = threadIdx.x + i * S::kThreads;
      const int64_t gm = m0 + idx / kBK;
      const int64_t gk = k0 + idx % kBK;
      xv[i] = gm < n_tok && gk < cols ? __ldg(x + gm * cols + gk) : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < kWScalar; ++i) {
      const int idx = threadIdx.x + i * S::kThreads;
      const int64_t gn = n0 + idx / kBK;
      const int64_t gk = k0 + idx % kBK;
      wv[i] = gn < rows && gk < cols ? internal::LoadHalf(w + gn * ld + gk) : 0.0f;
    }
  }

  __device__ __forceinline__ void Store(float (*xs)[BM + kPad], float (*ws)[BN + kPad]) const {
#pragma unroll
    for (int i = 0; i < kXScalar; ++i) {
      const int idx = threadIdx.x + i * S::kThreads;
      xs[idx % kBK][idx / kBK] = xv[i];
    }
#pragma unroll
    for (int i = 0; i < kWScalar; ++i) {
      const int idx = threadIdx.x + i * S::kThreads;
      ws[idx % kBK][idx / kBK] = wv[i];
    }
  }
};

// Shared memory of GemmF16Block: (stage buffer, k, token) and (stage buffer,
// k, weight row), FP32.
template <int BM, int BN>
struct GemmShared {
  __align__(16) float xs[2][kBK][BM + kPad];
  __align__(16) float ws[2][kBK][BN + kPad];
};

// Output tile `item`, m_blocks = ceil(n_tok / BM) tiles per weight-row
// block: tokens [(item % m_blocks) * BM, + BM) x weight rows [(item /
// m_blocks) * BN, + BN), by the TileShape::kThreads threads of one block (it
// contains __syncthreads() and no early return).
template <int BM, int BN, int TM, int TN, bool kVec>
__device__ __forceinline__ void GemmF16Block(unsigned item,
                                             const uint16_t* __restrict__ w,  // (rows, ld) FP16
                                             int64_t rows, int64_t cols, int64_t ld,
                                             const float* __restrict__ x,  // (n_tok, cols)
                                             int64_t n_tok,
                                             float* __restrict__ y,  // (n_tok, rows)
                                             int64_t m_blocks, bool y_vec4,
                                             GemmShared<BM, BN>& shared) {
  using S = TileShape<BM, BN, TM, TN>;
  auto& xs = shared.xs;
  auto& ws = shared.ws;

  // A warp's lanes cover 4 token groups x 8 row groups: each of its
  // fragment loads touches 4 (tokens) or 8 (rows) distinct float4s, one
  // shared-memory wavefront. (2 x 16 lanes measured 10-20% slower on an H200.)
  static_assert(S::kTx % 8 == 0 && (S::kThreads / S::kTx) % 4 == 0, "whole 4x8 warps");
  constexpr int kWarpsX = S::kTx / 8;
  const int lane = threadIdx.x % internal::kWarpSize;
  const int warp = threadIdx.x / internal::kWarpSize;
  const int tx = (warp % kWarpsX) * 8 + lane % 8;  // row group of this thread
  const int ty = (warp / kWarpsX) * 4 + lane / 8;  // token group of this thread
  // Token blocks of one weight-row block are consecutive items: as blocks of
  // one grid they run together and share that W tile through L2.
  const int64_t m0 = static_cast<int64_t>(item % m_blocks) * BM;
  const int64_t n0 = static_cast<int64_t>(item / m_blocks) * BN;

  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
  }

  Stage<BM, BN, TM, TN, kVec> stage;
  stage.Init(w, rows, cols, ld, x, n_tok, m0, n0);
  stage.Load(0, cols);
  stage.Store(xs[0], ws[0]);
  __syncthreads();

  const int64_t n_steps = (cols + kBK - 1) / kBK;
  for (int64_t step = 0; step < n_steps; ++step) {
    const int cur = static_cast<int>(step & 1);
    const bool more = step + 1 < n_steps;
    // The next step's global loads fly while this step computes.
    if (more) stage.Load((step + 1) * kBK, cols);
#pragma unroll
    for (int k = 0; k < kBK; ++k) {
      float a[TM];
      float b[TN];
#pragma unroll
      for (int g = 0; g < S::kMGroups; ++g) {
        const float4 v = *reinterpret_cast<const float4*>(&xs[cur][k][ty * 4 + g * S::kMStride]);
        a[4 * g + 0] = v.x;
        a[4 * g + 1] = v.y;
        a[4 * g + 2] = v.z;
        a[4 * g + 3] = v.w;
      }
#pragma unroll
      for (int g = 0; g < S::kNGroups; ++g) {
        const float4 v = *reinterpret_cast<const float4*>(&ws[cur][k][tx * 4 + g * S::kNStride]);
        b[4 * g + 0] = v.x;
        b[4 * g + 1] = v.y;
        b[4 * g + 2] = v.z;
        b[4 * g + 3] = v.w;
      }
      // Back and forth over the rows, so consecutive FMAs share an operand.
#pragma unroll
      for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int jj = 0; jj < TN; ++jj) {
          const int j = i % 2 == 1 ? TN - 1 - jj : jj;
          acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
      }
    }
    // The other buffer was last read before the previous barrier.
    if (more) stage.Store(xs[cur ^ 1], ws[cur ^ 1]);
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t gm = m0 + ty * 4 + (i / 4) * S::kMStride + i % 4;
    if (gm >= n_tok) continue;
#pragma unroll
    for (int g = 0; g < S::kNGroups; ++g) {
      const int64_t gn = n0 + tx * 4 + g * S::kNStride;
      float* dst = y + gm * rows + gn;
      if (y_vec4 && gn + 4 <= rows) {
        *reinterpret_cast<float4*>(dst) =
            make_float4(acc[i][4 * g], acc[i][4 * g + 1], acc[i][4 * g + 2], acc[i][4 * g + 3]);
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (gn + j < rows) dst[j] = acc[i][4 * g + j];
        }
      }
    }
  }
}

}  // namespace m40llm::gpu::gemm
