// Device-side helpers shared by the kernel families in cuda/ (the .cu files
// and their *_device.cuh): warp and block reductions, FP16 loads, and grid
// sizing. Included only by .cu files, directly or through a device header (it
// is not a launcher header); C++17 and sm_52 features only.
#pragma once

#if !defined(__CUDACC__)
#error "cuda/kernel_util.h is for CUDA sources only"
#endif

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace m40llm::gpu::internal {

inline constexpr int kWarpSize = 32;

// Sum over the 32 lanes of a warp; every lane gets the result.
__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Sum over all kBlock threads of a block; every thread gets the result.
// Contains __syncthreads(): all threads of the block must call it.
// `scratch` holds kBlock / 32 floats of shared memory.
template <int kBlock>
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  static_assert(kBlock % kWarpSize == 0 && kBlock <= 1024, "block must be whole warps");
  constexpr int kWarps = kBlock / kWarpSize;
  v = WarpSum(v);
  if constexpr (kWarps == 1) {
    return v;
  } else {
    const int lane = threadIdx.x % kWarpSize;
    const int warp = threadIdx.x / kWarpSize;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = lane < kWarps ? scratch[lane] : 0.0f;
    total = WarpSum(total);
    // Keep scratch intact until every warp has read it, so a second BlockSum
    // with the same scratch cannot overwrite it early.
    __syncthreads();
    return total;
  }
}

// FP16 bits -> FP32 with the hardware conversion (exact, subnormals included).
__device__ __forceinline__ float HalfBitsToFloat(uint16_t bits) {
  return __half2float(__ushort_as_half(bits));
}

// One FP16 weight through the read-only data cache.
__device__ __forceinline__ float LoadHalf(const uint16_t* p) {
  return HalfBitsToFloat(__ldg(reinterpret_cast<const unsigned short*>(p)));
}

// The 8 FP16 values packed in a 16-byte word, in memory order.
__device__ __forceinline__ void UnpackHalf8(const uint4& u, float out[8]) {
  const uint32_t words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    out[2 * k] = HalfBitsToFloat(static_cast<uint16_t>(words[k] & 0xffffu));
    out[2 * k + 1] = HalfBitsToFloat(static_cast<uint16_t>(words[k] >> 16));
  }
}

// Blocks for a grid-stride loop over n items: enough to cover n, capped so
// huge n reuses threads rather than launching millions of blocks.
inline unsigned int GridStrideBlocks(int64_t n, int block, int64_t max_blocks = 65536) {
  int64_t blocks = (n + block - 1) / block;
  if (blocks < 1) blocks = 1;
  if (blocks > max_blocks) blocks = max_blocks;
  return static_cast<unsigned int>(blocks);
}

// Multiprocessors of the current device (0 when it cannot be read).
inline int DeviceSmCount() {
  int dev = 0;
  int sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
    static_cast<void>(cudaGetLastError());
    return 0;
  }
  return sms;
}

}  // namespace m40llm::gpu::internal
