// The launches of a forward pass over a piece (see layer_step.h).
#include "cuda/layer_step.h"

#include <algorithm>

#include "cuda/attention.cuh"
#include "cuda/attention_prefill.cuh"
#include "cuda/elementwise.cuh"
#include "cuda/embedding.cuh"
#include "cuda/gemm.cuh"
#include "cuda/kv_cache.cuh"
#include "cuda/matvec.cuh"
#include "cuda/rmsnorm.cuh"
#include "cuda/rope.cuh"
#include "engine/status.h"

namespace m40llm::gpu {

absl::Status MatMul(Product kind, const DeviceMatrix& m, const float* x, int64_t n_tok, float* y,
                    cudaStream_t s) {
  if (kind == Product::kPrefill) {
    return LaunchGemmF16(m.w, m.rows, m.cols, m.ld, x, n_tok, y, s);
  }
  for (int64_t t = 0; t < n_tok; t += kMatMulSkinnyMaxTokens) {
    const int64_t n = std::min(kMatMulSkinnyMaxTokens, n_tok - t);
    RETURN_IF_ERROR(
        LaunchMatVecF16(m.w, m.rows, m.cols, m.ld, x + t * m.cols, n, y + t * m.rows, s));
  }
  return absl::OkStatus();
}

namespace {

// The layers of one piece: EnqueueLayers, one layer step at a time.
class LayerSteps {
 public:
  LayerSteps(const ModelConfig& c, const DeviceModel& m, const PieceInputs& piece, int attn_max_len,
             PassContext& p, cudaStream_t st)
      : c_(c), m_(m), in_(piece), attn_max_len_(attn_max_len), p_(p), st_(st) {
    rope_.n_rot = c.n_rot;
    rope_.freq_base = c.rope_freq_base;
    rope_.freq_scale = c.rope_freq_scale;
    rope_.freq_factors = m.rope_freqs;
    rope_.neox = c.rope_neox;  // llama: adjacent pairs; qwen2: NeoX halves
  }

  absl::Status Run() {
    RETURN_IF_ERROR(
        LaunchEmbeddingGather(m_.token_embd.w, c_.n_vocab, c_.n_embd, in_.tok, n_, p_.x, st_));
    for (int l = 0; l < c_.n_layer; ++l) {
      RETURN_IF_ERROR(Attention(m_.layers[l], m_.kv(l)));
      RETURN_IF_ERROR(FeedForward(m_.layers[l]));
    }
    if (pending_) RETURN_IF_ERROR(LaunchAdd(p_.x, p_.proj, n_ * c_.n_embd, p_.x, st_));
    return absl::OkStatus();
  }

 private:
  // RMSNorm of the residual stream x into h. Each block's output product
  // leaves its residual in proj; the next norm adds it into x in the same
  // kernel (LaunchAddRmsNorm).
  absl::Status Norm(const float* weight) {
    const absl::Status s =
        pending_ ? LaunchAddRmsNorm(p_.x, p_.proj, weight, n_, c_.n_embd, c_.rms_eps, p_.h, st_)
                 : LaunchRmsNorm(p_.x, weight, n_, c_.n_embd, c_.rms_eps, p_.h, st_);
    pending_ = false;
    return s;
  }

  // Attention block: norm, Q/K/V, RoPE, KV append, attention, output product.
  absl::Status Attention(const DeviceLayer& w, const KvCacheLayer& kv) {
    const int64_t q_dim = c_.q_dim(), kv_dim = c_.kv_dim();
    RETURN_IF_ERROR(Norm(w.attn_norm));
    float *q = p_.q, *k = p_.k, *v = p_.v;
    int64_t q_stride = q_dim, kv_stride = kv_dim;
    if (fused_) {
      RETURN_IF_ERROR(MatMul(product_, w.qkv, p_.h, n_, p_.qkv, st_));
      q = p_.qkv;
      k = p_.qkv + q_dim;
      v = p_.qkv + q_dim + kv_dim;
      q_stride = kv_stride = q_dim + 2 * kv_dim;
      if (w.qkv_bias != nullptr) {
        RETURN_IF_ERROR(LaunchAddBiasRows(p_.qkv, n_, q_stride, q_stride, w.qkv_bias, st_));
      }
    } else {
      RETURN_IF_ERROR(MatMul(product_, w.wq, p_.h, n_, p_.q, st_));
      RETURN_IF_ERROR(MatMul(product_, w.wk, p_.h, n_, p_.k, st_));
      RETURN_IF_ERROR(MatMul(product_, w.wv, p_.h, n_, p_.v, st_));
      if (w.qkv_bias != nullptr) {
        RETURN_IF_ERROR(LaunchAddBiasRows(p_.q, n_, q_dim, q_dim, w.qkv_bias, st_));
        RETURN_IF_ERROR(LaunchAddBiasRows(p_.k, n_, kv_dim, kv_dim, w.qkv_bias + q_dim, st_));
        RETURN_IF_ERROR(
            LaunchAddBiasRows(p_.v, n_, kv_dim, kv_dim, w.qkv_bias + q_dim + kv_dim, st_));
      }
    }
    RETURN_IF_ERROR(LaunchRope(q, n_, c_.n_head, c_.head_dim, q_stride, in_.pos, rope_, st_));
    RETURN_IF_ERROR(LaunchRope(k, n_, c_.n_head_kv, c_.head_dim, kv_stride, in_.pos, rope_, st_));
    RETURN_IF_ERROR(LaunchKvAppend({.k = k,
                                    .v = v,
                                    .n_tok = n_,
                                    .slots = in_.slot,
                                    .positions = in_.pos,
                                    .cache = kv,
                                    .row_stride = kv_stride},
                                   st_));
    if (in_.prefill_attention()) {
      RETURN_IF_ERROR(LaunchPrefillAttention({.q = q,
                                              .n_tok = n_,
                                              .n_head = c_.n_head,
                                              .chunk_slot = in_.chunks,
                                              .chunk_pos = in_.chunks + n_,
                                              .chunk_len = in_.chunks + 2 * n_,
                                              .chunk_row = in_.chunks + 3 * n_,
                                              .n_chunks = in_.n_chunks,
                                              .max_chunk_len = in_.max_chunk,
                                              .max_context = in_.max_context,
                                              .cache = kv,
                                              .out = p_.att},
                                             st_));
    } else {
      RETURN_IF_ERROR(
          LaunchDecodeAttention({.q = q,
                                 .n_seq = static_cast<int>(n_),
                                 .n_head = c_.n_head,
                                 .slots = in_.slot,
                                 .lengths = in_.len,
                                 .max_len = attn_max_len_,
                                 .cache = kv,
                                 .workspace = p_.attn_ws.get(),
                                 .workspace_bytes = p_.attn_ws.bytes(),
                                 .out = p_.att,
                                 .fixed_split_len = DecodeAttentionFixedSplitLen(m_.ctx_per_slot),
                                 .q_row_stride = q_stride},
                                st_));
    }
    RETURN_IF_ERROR(MatMul(product_, w.wo, p_.att, n_, p_.proj, st_));
    pending_ = true;
    return absl::OkStatus();
  }

  // Feed-forward block (SwiGLU): norm, gate/up, SwiGLU, down product.
  absl::Status FeedForward(const DeviceLayer& w) {
    RETURN_IF_ERROR(Norm(w.ffn_norm));
    if (fused_) {
      RETURN_IF_ERROR(MatMul(product_, w.gate_up, p_.h, n_, p_.gate_up, st_));
      RETURN_IF_ERROR(LaunchSwiGluRows(p_.gate_up, n_, c_.n_ff, p_.gate, st_));
    } else {
      RETURN_IF_ERROR(MatMul(product_, w.gate, p_.h, n_, p_.gate, st_));
      RETURN_IF_ERROR(MatMul(product_, w.up, p_.h, n_, p_.up, st_));
      RETURN_IF_ERROR(LaunchSwiGlu(p_.gate, p_.up, n_ * c_.n_ff, p_.gate, st_));
    }
    RETURN_IF_ERROR(MatMul(product_, w.down, p_.gate, n_, p_.proj, st_));
    pending_ = true;
    return absl::OkStatus();
  }

  const ModelConfig& c_;
  const DeviceModel& m_;
  const PieceInputs& in_;
  const int attn_max_len_;
  PassContext& p_;
  const cudaStream_t st_;
  const int64_t n_ = in_.n;
  const Product product_ = in_.prefill_attention() ? Product::kPrefill : Product::kDecode;
  // Decode steps of up to kLogitRows sequences run the fused QKV and gate/up
  // products: the same per-element sums as the separate ones (the skinny
  // kernel's order depends only on cols), in fewer, larger launches.
  const bool fused_ = product_ == Product::kDecode && n_ <= kLogitRows;
  RopeConfig rope_;
  bool pending_ = false;  // a residual waits in proj for the next norm
};

}  // namespace

absl::Status EnqueueLayers(const ModelConfig& c, const DeviceModel& m, const PieceInputs& piece,
                           int attn_max_len, PassContext& p, cudaStream_t st) {
  return LayerSteps(c, m, piece, attn_max_len, p, st).Run();
}

absl::Status EnqueueLmHead(const ModelConfig& c, const DeviceModel& m, const float* x, int64_t rows,
                           PassContext& p, cudaStream_t st) {
  RETURN_IF_ERROR(LaunchRmsNorm(x, m.output_norm, rows, c.n_embd, c.rms_eps, p.h, st));
  return MatMul(Product::kDecode, m.lm_head(c), p.h, rows, p.logits, st);
}

}  // namespace m40llm::gpu
