// The device model: the memory plan, the weight arena and its views, the
// KV cache, and the weight upload (see device_model.h).
#include "cuda/device_model.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/matvec.cuh"
#include "cuda/pass_context.h"
#include "engine/status.h"

namespace m40llm::gpu {

int64_t PaddedCols(int64_t cols) {
  return (cols + kMatVecRowAlignHalves - 1) / kMatVecRowAlignHalves * kMatVecRowAlignHalves;
}

uint64_t MatrixBytes(int64_t rows, int64_t cols) {
  return static_cast<uint64_t>(rows) * PaddedCols(cols) * sizeof(uint16_t);
}

uint64_t WeightBytesFor(const ModelConfig& c) {
  const uint64_t per_layer = MatrixBytes(c.q_dim(), c.n_embd) +
                             2 * MatrixBytes(c.kv_dim(), c.n_embd) +
                             MatrixBytes(c.n_embd, c.q_dim()) + 2 * MatrixBytes(c.n_ff, c.n_embd) +
                             MatrixBytes(c.n_embd, c.n_ff) + 2ull * c.n_embd * sizeof(float);
  uint64_t b = per_layer * c.n_layer + MatrixBytes(c.n_vocab, c.n_embd) +
               static_cast<uint64_t>(c.n_embd) * sizeof(float);
  if (!c.tied_output) b += MatrixBytes(c.n_vocab, c.n_embd);
  if (c.has_rope_freqs) b += static_cast<uint64_t>(c.n_rot / 2) * sizeof(float);
  if (c.qkv_bias) b += static_cast<uint64_t>(c.n_layer) * (c.q_dim() + 2 * c.kv_dim()) * sizeof(float);
  return b;
}

absl::StatusOr<void*> DeviceModel::Carve(uint64_t bytes) {
  const uint64_t at = weight_used;
  weight_used += (bytes + 255) / 256 * 256;
  if (weight_used > weights.size()) {
    return absl::InternalError("CUDA backend: the weight arena is smaller than planned");
  }
  return static_cast<void*>(weights.get() + at);
}

absl::Status DeviceModel::Allocate(const ModelConfig& c, const BackendOptions& o,
                                   uint64_t weight_bytes) {
  layers.resize(c.n_layer);
  // Padding per carve: at most 256 bytes per tensor.
  const uint64_t n_tensors = (c.qkv_bias ? 10ull : 9ull) * c.n_layer + 4;
  ASSIGN_OR_RETURN(weights, DeviceBuffer<uint8_t>::Allocate(weight_bytes + 256 * n_tensors));
  max_slots = o.max_slots;
  ctx_per_slot = o.ctx_per_slot;
  n_head_kv = c.n_head_kv;
  head_dim = c.head_dim;
  layer_cache_values = static_cast<uint64_t>(o.max_slots) * c.n_head_kv *
                       static_cast<uint64_t>(o.ctx_per_slot) * c.head_dim;
  ASSIGN_OR_RETURN(k_cache, DeviceBuffer<uint16_t>::Allocate(layer_cache_values * c.n_layer));
  ASSIGN_OR_RETURN(v_cache, DeviceBuffer<uint16_t>::Allocate(layer_cache_values * c.n_layer));
  return absl::OkStatus();
}

namespace {

// Streams weights into the device arena: each matrix is dequantised into one
// reused host buffer, then copied into its padded device rows.
class DeviceSink : public WeightSink {
 public:
  DeviceSink(DeviceModel* d, const ModelConfig& c) : d_(d), c_(c) {}

  absl::StatusOr<uint16_t*> MatrixBuffer(WeightId, int, int64_t rows, int64_t cols) override {
    host_.resize(static_cast<size_t>(rows * cols));
    return host_.data();
  }

  absl::Status MatrixDone(WeightId id, int layer, int64_t rows, int64_t cols) override {
    DeviceMatrix m;
    m.rows = rows;
    m.cols = cols;
    // The embedding table keeps dense rows for the gather; every other
    // matrix gets 16-byte rows for the matmul kernels' fast path.
    m.ld = id == WeightId::kTokenEmbd ? cols : PaddedCols(cols);
    ASSIGN_OR_RETURN(void* dst, Place(id, layer, rows, cols));
    if (m.ld != cols) {
      CUDA_RETURN_IF_ERROR(cudaMemset(dst, 0, MatrixBytes(rows, cols)));
    }
    CUDA_RETURN_IF_ERROR(cudaMemcpy2D(dst, m.ld * sizeof(uint16_t), host_.data(),
                                      cols * sizeof(uint16_t), cols * sizeof(uint16_t), rows,
                                      cudaMemcpyHostToDevice));
    m.w = static_cast<const uint16_t*>(dst);
    switch (id) {
      case WeightId::kTokenEmbd: d_->token_embd = m; break;
      case WeightId::kOutput: d_->output = m; break;
      case WeightId::kWq: d_->layers[layer].wq = m; break;
      case WeightId::kWk: d_->layers[layer].wk = m; break;
      case WeightId::kWv: d_->layers[layer].wv = m; break;
      case WeightId::kWo: d_->layers[layer].wo = m; break;
      case WeightId::kGate: d_->layers[layer].gate = m; break;
      case WeightId::kUp: d_->layers[layer].up = m; break;
      case WeightId::kDown: d_->layers[layer].down = m; break;
      default: return absl::InternalError("DeviceSink: not a matrix");
    }
    return absl::OkStatus();
  }

  absl::Status Vector(WeightId id, int layer, std::vector<float> values) override {
    if (id == WeightId::kBq || id == WeightId::kBk || id == WeightId::kBv) {
      return Bias(id, layer, values);
    }
    ASSIGN_OR_RETURN(void* dst, d_->Carve(values.size() * sizeof(float)));
    CUDA_RETURN_IF_ERROR(cudaMemcpy(dst, values.data(), values.size() * sizeof(float),
                                    cudaMemcpyHostToDevice));
    const float* p = static_cast<const float*>(dst);
    switch (id) {
      case WeightId::kOutputNorm: d_->output_norm = p; break;
      case WeightId::kRopeFreqs: d_->rope_freqs = p; break;
      case WeightId::kAttnNorm: d_->layers[layer].attn_norm = p; break;
      case WeightId::kFfnNorm: d_->layers[layer].ffn_norm = p; break;
      default: return absl::InternalError("DeviceSink: not a vector");
    }
    return absl::OkStatus();
  }

 private:
  // bq carves room for bq, bk, bv together, in the order of qkv's rows; bk
  // and bv go after it.
  absl::Status Bias(WeightId id, int layer, const std::vector<float>& values) {
    DeviceLayer& L = d_->layers[layer];
    const int64_t q = c_.q_dim(), kv = c_.kv_dim();
    if (id == WeightId::kBq) {
      ASSIGN_OR_RETURN(void* base, d_->Carve(static_cast<uint64_t>(q + 2 * kv) * sizeof(float)));
      L.qkv_bias = static_cast<const float*>(base);
    } else if (L.qkv_bias == nullptr) {
      return absl::InternalError("DeviceSink: biases out of order");
    }
    const int64_t at = id == WeightId::kBq ? 0 : id == WeightId::kBk ? q : q + kv;
    CUDA_RETURN_IF_ERROR(cudaMemcpy(const_cast<float*>(L.qkv_bias) + at, values.data(),
                                    values.size() * sizeof(float), cudaMemcpyHostToDevice));
    return absl::OkStatus();
  }

  // Device rows for a matrix: its own carve, except that wq carves room for
  // wq, wk, wv together (and gate for gate, up), which then follow it.
  absl::StatusOr<void*> Place(WeightId id, int layer, int64_t rows, int64_t cols) {
    DeviceLayer* L = layer >= 0 ? &d_->layers[layer] : nullptr;
    const int64_t ld = PaddedCols(cols);
    auto fused = [&](DeviceMatrix* whole, int64_t total_rows) -> absl::StatusOr<void*> {
      ASSIGN_OR_RETURN(void* base, d_->Carve(MatrixBytes(total_rows, cols)));
      *whole = DeviceMatrix{static_cast<const uint16_t*>(base), total_rows, cols, ld};
      return base;
    };
    auto after = [&](const DeviceMatrix& prev) -> absl::StatusOr<void*> {
      if (prev.w == nullptr) return absl::InternalError("DeviceSink: fused weights out of order");
      return static_cast<void*>(const_cast<uint16_t*>(prev.w) + prev.rows * prev.ld);
    };
    switch (id) {
      case WeightId::kWq: return fused(&L->qkv, c_.q_dim() + 2 * static_cast<int64_t>(c_.kv_dim()));
      case WeightId::kWk: return after(L->wq);
      case WeightId::kWv: return after(L->wk);
      case WeightId::kGate: return fused(&L->gate_up, 2 * static_cast<int64_t>(c_.n_ff));
      case WeightId::kUp: return after(L->gate);
      default: return d_->Carve(MatrixBytes(rows, cols));
    }
  }

  DeviceModel* d_;
  const ModelConfig& c_;
  std::vector<uint16_t> host_;
};

}  // namespace

absl::Status DeviceModel::LoadWeights(const GgufFile& file, const ModelConfig& c,
                                      const ProgressFn& progress, int n_threads,
                                      uint64_t* clamped) {
  DeviceSink sink(this, c);
  return StreamLlamaWeights(file, c, &sink, progress, n_threads, clamped);
}

}  // namespace m40llm::gpu

namespace m40llm {

CudaMemoryPlan PlanCudaMemory(const ModelConfig& c, const CudaBackendOptions& o, uint64_t free,
                              uint64_t total) {
  CudaMemoryPlan p;
  p.weights = gpu::WeightBytesFor(c);
  p.kv_bytes_per_position =
      2ull * c.n_layer * c.n_head_kv * static_cast<uint64_t>(c.head_dim) * sizeof(uint16_t);
  p.kv_cache = p.kv_bytes_per_position * static_cast<uint64_t>(std::max(0, o.base.max_slots)) *
               static_cast<uint64_t>(std::max(0, o.base.ctx_per_slot));
  const gpu::ScratchShape s = gpu::ScratchFor(c, o.max_tokens_per_pass, o.base.ctx_per_slot);
  p.scratch = gpu::kPassContexts *
              (s.floats * sizeof(float) + s.ints * sizeof(int32_t) + s.attn_ws + s.sample);
  p.reserve = gpu::kReserveBytes;
  p.device_free = free;
  p.device_total = total;
  return p;
}

absl::Status CheckCudaPlanFits(const CudaMemoryPlan& p, const ModelConfig& c,
                               const CudaBackendOptions& o, const std::string& device) {
  if (p.need() <= p.device_free) return absl::OkStatus();
  std::string msg = absl::StrFormat(
      "the model does not fit on %s: it needs %.2f GiB (weights %.2f GiB + KV cache %.2f GiB for "
      "%d slots x %d positions + scratch %.2f GiB + reserve %.2f GiB) but %.2f GiB of %.2f GiB "
      "are free",
      device, gpu::GiB(p.need()), gpu::GiB(p.weights), gpu::GiB(p.kv_cache), o.base.max_slots,
      o.base.ctx_per_slot, gpu::GiB(p.scratch), gpu::GiB(p.reserve), gpu::GiB(p.device_free),
      gpu::GiB(p.device_total));
  const uint64_t fixed = p.weights + p.scratch + p.reserve;
  if (fixed >= p.device_free) {
    absl::StrAppend(&msg,
                    "; the weights and scratch alone do not fit (a smaller "
                    "--max-tokens-per-pass shrinks scratch; a smaller model is needed)");
  } else {
    const uint64_t kv_budget = p.device_free - fixed;
    const uint64_t per_slot = p.kv_bytes_per_position * static_cast<uint64_t>(o.base.ctx_per_slot);
    const uint64_t per_pos = p.kv_bytes_per_position * static_cast<uint64_t>(o.base.max_slots);
    const uint64_t max_batch = per_slot ? kv_budget / per_slot : 0;
    const uint64_t max_ctx = per_pos ? kv_budget / per_pos : 0;
    absl::StrAppend(&msg, "; what fits: --max-batch ", max_batch, " at context ",
                    o.base.ctx_per_slot, ", or --ctx-per-slot ", max_ctx, " at batch ",
                    o.base.max_slots);
  }
  (void)c;
  return absl::ResourceExhaustedError(msg);
}

}  // namespace m40llm
