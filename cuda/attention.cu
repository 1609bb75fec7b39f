// Decode attention kernels and launcher (see attention.cuh).
//
// The kernels are thin wrappers over attention_device.cuh, which describes
// the work split and what a block does.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "cuda/attention.cuh"

#include "absl/strings/str_cat.h"
#include "cuda/attention_device.cuh"
#include "cuda/cuda_check.h"

namespace m40llm::gpu {
namespace {

using attention::kBlock;
using attention::kMaxSplits;
using attention::kTile;

constexpr int kMinSplitLen = 256;  // never split a context into pieces shorter than this
constexpr int kTargetBlocksPerSm = 4;
static_assert(kMinSplitLen % kTile == 0, "splits are whole tiles");

// Grid (kv heads x head tiles, splits, sequences).
template <int kLanesPerRow, int kHeads>
__global__ void __launch_bounds__(kBlock)
    DecodeAttentionKernel(const float* __restrict__ q,  // (n_seq, q_stride), heads packed in a row
                          int64_t q_stride,
                          const int32_t* __restrict__ slots,     // (n_seq)
                          const int32_t* __restrict__ lengths,   // (n_seq)
                          const uint16_t* __restrict__ k_cache,  // (slots, n_head_kv, ctx, hd)
                          const uint16_t* __restrict__ v_cache,  // (slots, n_head_kv, ctx, hd)
                          int max_len, int n_head, int n_head_kv, int head_dim, int max_slots,
                          int ctx_per_slot, int group, int split_len, int n_splits, float scale,
                          float* __restrict__ part_o,   // (n_seq, n_head, n_splits, head_dim)
                          float* __restrict__ part_ml,  // (n_seq, n_head, n_splits, 2)
                          float* __restrict__ out) {    // (n_seq, n_head, head_dim)
  __shared__ attention::DecodeAttentionShared<kHeads> shared;
  attention::DecodeAttentionBlock<kLanesPerRow, kHeads>(
      static_cast<int>(blockIdx.x), blockIdx.y, blockIdx.z, q, q_stride, slots, lengths, k_cache,
      v_cache, max_len, n_head, n_head_kv, head_dim, max_slots, ctx_per_slot, group, split_len,
      n_splits, scale, part_o, part_ml, out, shared);
}

// Grid (heads, sequences).
template <int kMergeBlock>
__global__ void __launch_bounds__(kMergeBlock)
    DecodeAttentionMergeKernel(const int32_t* __restrict__ slots,    // (n_seq)
                               const int32_t* __restrict__ lengths,  // (n_seq)
                               int max_len, int max_slots, int n_head, int head_dim, int split_len,
                               int n_splits,
                               const float* __restrict__ part_o,   // (n_seq, n_head, n_splits, hd)
                               const float* __restrict__ part_ml,  // (n_seq, n_head, n_splits, 2)
                               float* __restrict__ out) {          // (n_seq, n_head, head_dim)
  __shared__ attention::DecodeAttentionMergeShared shared;
  attention::DecodeAttentionMergeBlock<kMergeBlock>(blockIdx.x, blockIdx.y, slots, lengths, max_len,
                                                    max_slots, n_head, head_dim, split_len,
                                                    n_splits, part_o, part_ml, out, shared);
}

// How a call splits its contexts.
struct SplitPlan {
  int split_len = 0;  // positions per split, a multiple of kTile
  int n_splits = 1;   // splits of the longest context (max_len)
};

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The most splits a context of ctx positions is ever cut into.
int MaxSplitsFor(int64_t ctx) {
  return static_cast<int>(std::min<int64_t>(kMaxSplits, CeilDiv(ctx, kMinSplitLen)));
}

int64_t BytesPerSplit(int64_t n_seq, int64_t n_head, int64_t head_dim) {
  return n_seq * n_head * (head_dim + 2) * static_cast<int64_t>(sizeof(float));
}

// Splits only as much as it takes to give the GPU kTargetBlocksPerSm blocks
// per SM, never into pieces under kMinSplitLen, and within the workspace.
SplitPlan PlanSplits(int64_t base_blocks, int64_t sm_count, int max_len, int64_t n_seq,
                     int64_t n_head, int64_t head_dim, size_t workspace_bytes) {
  int64_t splits = CeilDiv(sm_count * kTargetBlocksPerSm, base_blocks);
  splits = std::min<int64_t>(splits, MaxSplitsFor(max_len));
  splits = std::min<int64_t>(
      splits, static_cast<int64_t>(workspace_bytes) / BytesPerSplit(n_seq, n_head, head_dim));
  if (splits < 1) splits = 1;
  SplitPlan plan;
  plan.split_len = static_cast<int>(CeilDiv(CeilDiv(max_len, splits), kTile) * kTile);
  plan.n_splits = static_cast<int>(CeilDiv(max_len, plan.split_len));
  return plan;
}

struct KernelArgs {
  const float* q;
  int64_t q_stride;
  const int32_t* slots;
  const int32_t* lengths;
  const uint16_t* k_cache;
  const uint16_t* v_cache;
  int max_len, n_head, n_head_kv, head_dim, max_slots, ctx_per_slot, group;
  SplitPlan plan;
  float scale;
  float* part_o;
  float* part_ml;
  float* out;
  int n_seq;
};

template <int kLanesPerRow, int kHeads>
void LaunchMain(const KernelArgs& a, cudaStream_t stream) {
  const int tiles_per_kv = (a.group + kHeads - 1) / kHeads;
  const dim3 grid(static_cast<unsigned int>(a.n_head_kv * tiles_per_kv),
                  static_cast<unsigned int>(a.plan.n_splits), static_cast<unsigned int>(a.n_seq));
  DecodeAttentionKernel<kLanesPerRow, kHeads><<<grid, kBlock, 0, stream>>>(
      a.q, a.q_stride, a.slots, a.lengths, a.k_cache, a.v_cache, a.max_len, a.n_head, a.n_head_kv,
      a.head_dim, a.max_slots, a.ctx_per_slot, a.group, a.plan.split_len, a.plan.n_splits, a.scale, a.part_o,
      a.part_ml, a.out);
}

template <int kLanesPerRow>
void LaunchForHeads(int heads_per_block, const KernelArgs& a, cudaStream_t stream) {
  switch (heads_per_block) {
    case 1:
      LaunchMain<kLanesPerRow, 1>(a, stream);
      break;
    case 2:
      LaunchMain<kLanesPerRow, 2>(a, stream);
      break;
    case 4:
      LaunchMain<kLanesPerRow, 4>(a, stream);
      break;
    default:
      LaunchMain<kLanesPerRow, 8>(a, stream);
      break;
  }
}

}  // namespace

size_t DecodeAttentionWorkspaceBytes(int max_seqs, int n_head, int head_dim, int ctx_per_slot) {
  if (max_seqs <= 0 || n_head <= 0 || head_dim <= 0 || ctx_per_slot <= 0) return 0;
  const int max_splits = MaxSplitsFor(ctx_per_slot);
  if (max_splits <= 1) return 0;
  return static_cast<size_t>(BytesPerSplit(max_seqs, n_head, head_dim)) * max_splits;
}

int DecodeAttentionFixedSplitLen(int ctx_per_slot) {
  const int64_t per_split = CeilDiv(std::max(ctx_per_slot, 1), kMaxSplits);
  return static_cast<int>(std::max<int64_t>(kMinSplitLen, CeilDiv(per_split, kTile) * kTile));
}

absl::Status LaunchDecodeAttention(const DecodeAttentionArgs& args, cudaStream_t stream) {
  const KvCacheLayer& cache = args.cache;
  size_t workspace_bytes = args.workspace_bytes;
  if (args.n_seq < 0) return absl::InvalidArgumentError("LaunchDecodeAttention: negative n_seq");
  if (args.n_head <= 0 || cache.n_head_kv <= 0 || args.n_head % cache.n_head_kv != 0) {
    return absl::InvalidArgumentError(
        "LaunchDecodeAttention: n_head must be a positive multiple of n_head_kv");
  }
  if (cache.head_dim < kAttentionHeadDimAlign || cache.head_dim > kAttentionMaxHeadDim ||
      cache.head_dim % kAttentionHeadDimAlign != 0) {
    return absl::InvalidArgumentError(
        "LaunchDecodeAttention: head_dim must be a multiple of 8 in [8, 256]");
  }
  if (cache.max_slots <= 0 || cache.ctx_per_slot <= 0) {
    return absl::InvalidArgumentError(
        "LaunchDecodeAttention: max_slots and ctx_per_slot must be positive");
  }
  if (static_cast<double>(cache.max_slots) * cache.n_head_kv * cache.ctx_per_slot *
          cache.head_dim >=
      9.0e18) {
    return absl::InvalidArgumentError("LaunchDecodeAttention: cache shape exceeds int64 indexing");
  }
  if (args.n_seq > 65535) {
    return absl::InvalidArgumentError("LaunchDecodeAttention: n_seq exceeds 65535 (grid z)");
  }
  if (args.q_row_stride != 0 &&
      args.q_row_stride < static_cast<int64_t>(args.n_head) * cache.head_dim) {
    return absl::InvalidArgumentError(
        "LaunchDecodeAttention: q_row_stride must be 0 or at least n_head * head_dim");
  }
  if (args.n_seq == 0) return absl::OkStatus();
  if (args.max_len < 1 || args.max_len > cache.ctx_per_slot) {
    return absl::InvalidArgumentError(
        "LaunchDecodeAttention: max_len must be in [1, ctx_per_slot]");
  }
  if (args.q == nullptr || args.slots == nullptr || args.lengths == nullptr || cache.k == nullptr ||
      cache.v == nullptr || args.out == nullptr) {
    return absl::InvalidArgumentError("LaunchDecodeAttention: null pointer");
  }
  if (reinterpret_cast<uintptr_t>(cache.k) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(cache.v) % 16 != 0) {
    return absl::InvalidArgumentError("LaunchDecodeAttention: caches must be 16-byte aligned");
  }
  if (args.workspace == nullptr) workspace_bytes = 0;
  if (reinterpret_cast<uintptr_t>(args.workspace) % alignof(float) != 0) {
    return absl::InvalidArgumentError("LaunchDecodeAttention: workspace must be 4-byte aligned");
  }

  const int group = args.n_head / cache.n_head_kv;
  const int heads_per_block = group == 1 ? 1 : group == 2 ? 2 : group <= 4 ? 4 : 8;
  const int64_t base_blocks =
      static_cast<int64_t>(args.n_seq) * cache.n_head_kv * CeilDiv(group, heads_per_block);
  if (base_blocks / args.n_seq > INT_MAX) {
    return absl::InvalidArgumentError("LaunchDecodeAttention: too many heads for the grid");
  }
  int device = 0;
  int sm_count = 0;
  CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));

  KernelArgs a{};
  a.q = args.q;
  a.q_stride = args.q_row_stride > 0 ? args.q_row_stride
                                     : static_cast<int64_t>(args.n_head) * cache.head_dim;
  a.slots = args.slots;
  a.lengths = args.lengths;
  a.k_cache = cache.k;
  a.v_cache = cache.v;
  a.max_len = args.max_len;
  a.n_head = args.n_head;
  a.n_head_kv = cache.n_head_kv;
  a.head_dim = cache.head_dim;
  a.max_slots = cache.max_slots;
  a.ctx_per_slot = cache.ctx_per_slot;
  a.group = group;
  if (args.fixed_split_len > 0) {
    if (args.fixed_split_len % kTile != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "LaunchDecodeAttention: fixed_split_len must be a multiple of ", kTile));
    }
    a.plan.split_len = args.fixed_split_len;
    a.plan.n_splits = static_cast<int>(CeilDiv(args.max_len, args.fixed_split_len));
    if (a.plan.n_splits > kMaxSplits ||
        (a.plan.n_splits > 1 &&
         static_cast<int64_t>(workspace_bytes) <
             BytesPerSplit(args.n_seq, args.n_head, cache.head_dim) * a.plan.n_splits)) {
      return absl::InvalidArgumentError(
          "LaunchDecodeAttention: fixed_split_len leaves more splits than the merge or the "
          "workspace can take");
    }
  } else {
    a.plan = PlanSplits(base_blocks, sm_count, args.max_len, args.n_seq, args.n_head,
                        cache.head_dim, workspace_bytes);
  }
  // As the CPU engine computes it.
  a.scale = 1.0f / std::sqrt(static_cast<float>(cache.head_dim));
  a.out = args.out;
  a.n_seq = args.n_seq;
  if (a.plan.n_splits > 1) {
    // part_o then part_ml; PlanSplits kept them within workspace_bytes.
    a.part_o = static_cast<float*>(args.workspace);
    a.part_ml = a.part_o +
                static_cast<int64_t>(args.n_seq) * args.n_head * a.plan.n_splits * cache.head_dim;
  } else {
    a.part_o = nullptr;
    a.part_ml = nullptr;
  }

  const int lanes = cache.head_dim / 8;  // lanes that hold a row's dims
  if (lanes <= 4) {
    LaunchForHeads<4>(heads_per_block, a, stream);
  } else if (lanes <= 8) {
    LaunchForHeads<8>(heads_per_block, a, stream);
  } else if (lanes <= 16) {
    LaunchForHeads<16>(heads_per_block, a, stream);
  } else {
    LaunchForHeads<32>(heads_per_block, a, stream);
  }
  CUDA_RETURN_IF_LAUNCH_ERROR();
  if (a.plan.n_splits > 1) {
    constexpr int kMergeBlock = 128;
    const dim3 grid(static_cast<unsigned int>(args.n_head), static_cast<unsigned int>(args.n_seq));
    DecodeAttentionMergeKernel<kMergeBlock><<<grid, kMergeBlock, 0, stream>>>(
        args.slots, args.lengths, args.max_len, cache.max_slots, args.n_head, cache.head_dim,
        a.plan.split_len, a.plan.n_splits, a.part_o, a.part_ml, args.out);
    CUDA_RETURN_IF_LAUNCH_ERROR();
  }
  return absl::OkStatus();
}

}  // namespace m40llm::gpu
