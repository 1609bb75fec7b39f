// The llama-family forward pass on the CPU, written to read like the math.
#include "engine/cpu_backend.h"

#include <algorithm>
#include <cmath>

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "engine/cpu_ops.h"
#include "engine/fp16.h"
#include "engine/status.h"

namespace m40llm {

CpuBackend::CpuBackend(const LlamaModel* model, const BackendOptions& opts)
    : model_(model), opts_(opts), pool_(opts.n_threads) {}

absl::StatusOr<std::unique_ptr<CpuBackend>> CpuBackend::Create(const LlamaModel* model,
                                                              const BackendOptions& opts) {
  const ModelConfig& c = model->config();
  BackendOptions o = opts;
  if (o.ctx_per_slot <= 0) o.ctx_per_slot = c.n_ctx_train;
  if (o.max_slots <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_slots must be positive, got ",
                                                   o.max_slots));
  }
  const uint64_t per_cache = static_cast<uint64_t>(c.n_layer) * o.max_slots * c.n_head_kv *
                             static_cast<uint64_t>(o.ctx_per_slot) * c.head_dim;
  constexpr uint64_t kMaxCacheValues = 1ull << 36;  // 128 GiB of FP16 per cache
  if (per_cache > kMaxCacheValues) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache of ", per_cache * 4, " bytes (", o.max_slots, " slots x ", o.ctx_per_slot,
        " positions) is too large"));
  }
  auto b = std::unique_ptr<CpuBackend>(new CpuBackend(model, o));
  b->k_cache_.assign(per_cache, 0);
  b->v_cache_.assign(per_cache, 0);
  return b;
}

std::string CpuBackend::device() const {
  return absl::StrCat("CPU, ", pool_.size(), " threads");
}

BackendMemory CpuBackend::memory() const {
  BackendMemory m;
  m.weights = model_->weight_bytes();
  m.kv_cache = (k_cache_.size() + v_cache_.size()) * sizeof(uint16_t);
  const long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES);
  const long page = sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && avail >= 0 && page > 0) {
    m.device_total = static_cast<uint64_t>(pages) * page;
    m.device_used = m.device_total - static_cast<uint64_t>(avail) * page;
  }
  return m;
}

size_t CpuBackend::KvIndex(int layer, int slot, int kv_head, int pos) const {
  const ModelConfig& c = model_->config();
  size_t i = static_cast<size_t>(layer);
  i = i * opts_.max_slots + slot;
  i = i * c.n_head_kv + kv_head;
  i = i * opts_.ctx_per_slot + pos;
  return i * c.head_dim;
}

absl::Status CpuBackend::Forward(std::span<const SeqChunk> batch, ForwardOutput* out) {
  const ModelConfig& c = model_->config();
  RETURN_IF_ERROR(ValidateBatch(c, opts_, batch));
  std::lock_guard<std::mutex> lock(forward_mu_);
  const int64_t n_embd = c.n_embd, hd = c.head_dim, q_dim = c.q_dim(), kv_dim = c.kv_dim();
  const int group = c.n_head / c.n_head_kv;

  // Flatten the batch: token t belongs to slot slot_of[t] at position pos_of[t].
  std::vector<int32_t> tok;
  std::vector<int> slot_of, pos_of;
  std::vector<int64_t> out_rows;  // which tokens produce logits
  for (const SeqChunk& s : batch) {
    for (size_t k = 0; k < s.tokens.size(); ++k) {
      if (s.all_logits || k + 1 == s.tokens.size()) out_rows.push_back(tok.size());
      tok.push_back(s.tokens[k]);
      slot_of.push_back(s.slot);
      pos_of.push_back(s.pos + static_cast<int>(k));
    }
  }
  const int64_t T = static_cast<int64_t>(tok.size());

  std::vector<float> x(T * n_embd);      // (T, n_embd) residual stream
  std::vector<float> h(T * n_embd);      // (T, n_embd) normed input
  std::vector<float> q(T * q_dim);       // (T, n_head, head_dim)
  std::vector<float> k(T * kv_dim);      // (T, n_head_kv, head_dim)
  std::vector<float> v(T * kv_dim);      // (T, n_head_kv, head_dim)
  std::vector<float> att(T * q_dim);     // (T, n_head, head_dim)
  std::vector<float> proj(T * n_embd);   // (T, n_embd)
  std::vector<float> gate(T * c.n_ff);   // (T, n_ff)
  std::vector<float> up(T * c.n_ff);     // (T, n_ff)

  for (int64_t t = 0; t < T; ++t) {
    cpu::WeightRow(model_->token_embd, tok[t], &x[t * n_embd]);
  }

  cpu::RopeParams rope;
  rope.n_rot = c.n_rot;
  rope.freq_base = c.rope_freq_base;
  rope.freq_scale = c.rope_freq_scale;
  rope.freq_factors = model_->rope_freqs.empty() ? nullptr : model_->rope_freqs.data();
  rope.neox = c.rope_neox;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  for (int l = 0; l < c.n_layer; ++l) {
    const LayerWeights& w = model_->layers[l];

    // Attention block.
    for (int64_t t = 0; t < T; ++t) {
      cpu::RmsNorm(&x[t * n_embd], w.attn_norm.data(), n_embd, c.rms_eps, &h[t * n_embd]);
    }
    cpu::MatMul(pool_, w.wq, h.data(), T, q.data());
    cpu::MatMul(pool_, w.wk, h.data(), T, k.data());
    cpu::MatMul(pool_, w.wv, h.data(), T, v.data());
    if (c.qkv_bias) {
      for (int64_t t = 0; t < T; ++t) {
        cpu::AddBias(&q[t * q_dim], w.bq.data(), q_dim);
        cpu::AddBias(&k[t * kv_dim], w.bk.data(), kv_dim);
        cpu::AddBias(&v[t * kv_dim], w.bv.data(), kv_dim);
      }
    }
    for (int64_t t = 0; t < T; ++t) {
      cpu::Rope(&q[t * q_dim], c.n_head, hd, pos_of[t], rope);
      cpu::Rope(&k[t * kv_dim], c.n_head_kv, hd, pos_of[t], rope);
      // Append this token's K and V to the cache as FP16 before attending,
      // so every token reads keys and values with the storage rounding.
      for (int g = 0; g < c.n_head_kv; ++g) {
        const size_t at = KvIndex(l, slot_of[t], g, pos_of[t]);
        cpu::FloatToHalfRow(&k[t * kv_dim + g * hd], &k_cache_[at], hd);
        cpu::FloatToHalfRow(&v[t * kv_dim + g * hd], &v_cache_[at], hd);
      }
    }
    pool_.ParallelFor(static_cast<size_t>(T) * c.n_head, 1, [&](size_t i0, size_t i1) {
      std::vector<float> score(opts_.ctx_per_slot);
      std::vector<float> row(hd);
      for (size_t i = i0; i < i1; ++i) {
        const int64_t t = static_cast<int64_t>(i / c.n_head);
        const int head = static_cast<int>(i % c.n_head);
        const int g = head / group;
        const int n_pos = pos_of[t] + 1;  // causal: positions 0..pos
        const float* qh = &q[t * q_dim + head * hd];
        const size_t base = KvIndex(l, slot_of[t], g, 0);
        for (int j = 0; j < n_pos; ++j) {
          cpu::HalfToFloatRow(&k_cache_[base + j * hd], row.data(), hd);
          score[j] = cpu::Dot(qh, row.data(), hd) * scale;
        }
        cpu::Softmax(score.data(), n_pos);
        float* o = &att[t * q_dim + head * hd];
        std::fill(o, o + hd, 0.0f);
        for (int j = 0; j < n_pos; ++j) {
          cpu::HalfToFloatRow(&v_cache_[base + j * hd], row.data(), hd);
          const float p = score[j];
          for (int64_t d = 0; d < hd; ++d) o[d] += p * row[d];
        }
      }
    });
    cpu::MatMul(pool_, w.wo, att.data(), T, proj.data());
    for (int64_t i = 0; i < T * n_embd; ++i) x[i] += proj[i];

    // Feed-forward block (SwiGLU).
    for (int64_t t = 0; t < T; ++t) {
      cpu::RmsNorm(&x[t * n_embd], w.ffn_norm.data(), n_embd, c.rms_eps, &h[t * n_embd]);
    }
    cpu::MatMul(pool_, w.w_gate, h.data(), T, gate.data());
    cpu::MatMul(pool_, w.w_up, h.data(), T, up.data());
    cpu::SwiGlu(gate.data(), up.data(), static_cast<size_t>(T) * c.n_ff, gate.data());
    cpu::MatMul(pool_, w.w_down, gate.data(), T, proj.data());
    for (int64_t i = 0; i < T * n_embd; ++i) x[i] += proj[i];
  }

  // Final norm and LM head, only for the rows that produce logits.
  const int64_t R = static_cast<int64_t>(out_rows.size());
  std::vector<float> hr(R * n_embd);
  for (int64_t r = 0; r < R; ++r) {
    cpu::RmsNorm(&x[out_rows[r] * n_embd], model_->output_norm.data(), n_embd, c.rms_eps,
                 &hr[r * n_embd]);
  }
  out->rows = R;
  out->logits.resize(static_cast<size_t>(R) * c.n_vocab);
  cpu::MatMul(pool_, model_->lm_head(), hr.data(), R, out->logits.data());
  return absl::OkStatus();
}

}  // namespace m40llm
