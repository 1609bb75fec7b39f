// Llama config parsing and weight loading (dequantise to FP16 per tensor).
#include "engine/model.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/dequant.h"
#include "engine/status.h"
#include "engine/thread_pool.h"
#include "spdlog/spdlog.h"

namespace m40llm {
namespace {

std::string Key(const std::string& arch, std::string_view suffix) {
  return absl::StrCat(arch, ".", Sv(suffix));
}

// A required positive int32 metadata value.
absl::StatusOr<int32_t> RequiredInt(const GgufFile& f, const std::string& key) {
  if (f.Find(key) == nullptr) {
    return absl::NotFoundError(absl::StrCat(
        f.path(), ": missing required metadata key '", key,
        "'"));
  }
  ASSIGN_OR_RETURN(uint64_t v, f.GetUint(key));
  if (v == 0 || v > (1u << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat(f.path(), ": metadata key '", key, "' has invalid value ", v));
  }
  return static_cast<int32_t>(v);
}

absl::StatusOr<int32_t> OptionalInt(const GgufFile& f, const std::string& key,
                                    int32_t fallback) {
  if (f.Find(key) == nullptr) return fallback;
  ASSIGN_OR_RETURN(uint64_t v, f.GetUint(key));
  if (v > (1u << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat(f.path(), ": metadata key '", key, "' has invalid value ", v));
  }
  return static_cast<int32_t>(v);
}

absl::StatusOr<float> OptionalFloat(const GgufFile& f, const std::string& key,
                                    float fallback) {
  if (f.Find(key) == nullptr) return fallback;
  ASSIGN_OR_RETURN(double v, f.GetFloat(key));
  return static_cast<float>(v);
}

}  // namespace

absl::StatusOr<ModelConfig> ReadModelConfig(const GgufFile& f) {
  ModelConfig c;
  if (f.Find("general.architecture") == nullptr) {
    return absl::NotFoundError(absl::StrCat(
        f.path(), ": missing metadata key 'general.architecture' (supported: ",
        kSupportedArchitectures, ")"));
  }
  ASSIGN_OR_RETURN(c.arch, f.GetString("general.architecture"));
  if (c.arch != "llama" && c.arch != "qwen2") {
    return absl::UnimplementedError(absl::StrCat(
        f.path(), ": unsupported architecture '", c.arch,
        "' (supported: ", kSupportedArchitectures,
        ", which cover Llama 1/2/3, TinyLlama, Mistral, Code Llama, Qwen 1.5/2/2.5 and the "
        "DeepSeek-R1 distills of Qwen)"));
  }
  // qwen2: llama with Q/K/V biases and NeoX RoPE (as llama.cpp builds it).
  c.qkv_bias = c.arch == "qwen2";
  c.rope_neox = c.arch == "qwen2";
  if (f.Find("general.name") != nullptr) {
    ASSIGN_OR_RETURN(c.name, f.GetString("general.name"));
  }
  const std::string& a = c.arch;
  ASSIGN_OR_RETURN(c.n_embd, RequiredInt(f, Key(a, "embedding_length")));
  ASSIGN_OR_RETURN(c.n_layer, RequiredInt(f, Key(a, "block_count")));
  ASSIGN_OR_RETURN(c.n_ff, RequiredInt(f, Key(a, "feed_forward_length")));
  ASSIGN_OR_RETURN(c.n_head, RequiredInt(f, Key(a, "attention.head_count")));
  ASSIGN_OR_RETURN(c.n_head_kv, OptionalInt(f, Key(a, "attention.head_count_kv"), c.n_head));
  ASSIGN_OR_RETURN(c.n_ctx_train, RequiredInt(f, Key(a, "context_length")));
  if (c.n_head_kv == 0 || c.n_head % c.n_head_kv != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        f.path(), ": attention.head_count ", c.n_head,
        " is not a multiple of attention.head_count_kv ", c.n_head_kv));
  }
  if (c.n_embd % c.n_head != 0 && f.Find(Key(a, "attention.key_length")) == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        f.path(), ": embedding_length ", c.n_embd, " is not divisible by head_count ",
        c.n_head, " and attention.key_length is absent"));
  }
  ASSIGN_OR_RETURN(c.head_dim,
                   OptionalInt(f, Key(a, "attention.key_length"), c.n_embd / c.n_head));
  ASSIGN_OR_RETURN(int32_t v_len, OptionalInt(f, Key(a, "attention.value_length"), c.head_dim));
  if (v_len != c.head_dim) {
    return absl::UnimplementedError(absl::StrCat(
        f.path(), ": attention.value_length ", v_len, " differs from key_length ",
        c.head_dim, "; not supported"));
  }
  ASSIGN_OR_RETURN(c.n_rot, OptionalInt(f, Key(a, "rope.dimension_count"), c.head_dim));
  if (c.n_rot > c.head_dim || c.n_rot % 2 != 0 || c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        f.path(), ": rope.dimension_count ", c.n_rot, " is invalid for head size ",
        c.head_dim));
  }
  ASSIGN_OR_RETURN(c.rope_freq_base, OptionalFloat(f, Key(a, "rope.freq_base"), 10000.0f));
  ASSIGN_OR_RETURN(c.rms_eps,
                   OptionalFloat(f, Key(a, "attention.layer_norm_rms_epsilon"), 1e-5f));
  // RoPE scaling, read as llama.cpp reads it: the type defaults to linear;
  // the factor comes from rope.scaling.factor, else rope.scale_linear, and
  // 0 (or absent) means none; the type "none" never scales.
  std::string scaling_type = "linear";
  if (f.Find(Key(a, "rope.scaling.type")) != nullptr) {
    ASSIGN_OR_RETURN(scaling_type, f.GetString(Key(a, "rope.scaling.type")));
  }
  float factor = 0.0f;
  if (f.Find(Key(a, "rope.scaling.factor")) != nullptr) {
    ASSIGN_OR_RETURN(factor, OptionalFloat(f, Key(a, "rope.scaling.factor"), 0.0f));
  } else {
    ASSIGN_OR_RETURN(factor, OptionalFloat(f, Key(a, "rope.scale_linear"), 0.0f));
  }
  if (scaling_type == "yarn" || scaling_type == "longrope") {
    return absl::UnimplementedError(absl::StrCat(
        f.path(), ": rope.scaling.type '", scaling_type, "' (",
        scaling_type == "yarn" ? "YaRN" : "LongRoPE",
        " context extension) is not supported; supported: none, linear, llama3"));
  }
  if (scaling_type != "linear" && scaling_type != "none" && scaling_type != "llama3") {
    // Llama 3.1's "llama3" scaling is carried by rope_freqs.weight and needs
    // nothing here.
    return absl::InvalidArgumentError(absl::StrCat(
        f.path(), ": unknown rope.scaling.type '", scaling_type,
        "' (known: none, linear, yarn, longrope; supported: none, linear, llama3)"));
  }
  if (!std::isfinite(factor) || factor < 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat(f.path(), ": RoPE scaling factor ", factor, " must be positive"));
  }
  if (factor == 0.0f || scaling_type == "none") factor = 1.0f;
  c.rope_freq_scale = 1.0f / factor;
  if (!(c.rope_freq_base > 0.0f) || !(c.rms_eps > 0.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        f.path(), ": rope.freq_base and layer_norm_rms_epsilon must be positive"));
  }

  const GgufTensorInfo* embd = f.FindTensor("token_embd.weight");
  if (embd == nullptr) {
    return absl::NotFoundError(absl::StrCat(f.path(), ": missing tensor 'token_embd.weight'"));
  }
  if (embd->n_dims != 2 || embd->dims[0] != static_cast<uint64_t>(c.n_embd) ||
      embd->dims[1] > (1u << 24)) {
    return absl::InvalidArgumentError(absl::StrCat(
        f.path(), ": tensor 'token_embd.weight' has shape [", embd->dims[0], ", ",
        embd->dims[1], "], expected [", c.n_embd, ", n_vocab]"));
  }
  c.n_vocab = static_cast<int32_t>(embd->dims[1]);
  c.tied_output = f.FindTensor("output.weight") == nullptr;
  c.has_rope_freqs = f.FindTensor("rope_freqs.weight") != nullptr;

  return c;
}

namespace {

// Checks a tensor's presence, type support and shape.
absl::StatusOr<const GgufTensorInfo*> Expect(const GgufFile& f, const std::string& name,
                                             std::vector<uint64_t> shape) {
  const GgufTensorInfo* t = f.FindTensor(name);
  if (t == nullptr) {
    return absl::NotFoundError(absl::StrCat(f.path(), ": missing tensor '", name, "'"));
  }
  if (!IsSupportedWeightType(t->type)) {
    return absl::UnimplementedError(absl::StrCat(
        f.path(), ": tensor '", name, "' has type ", TypeName(t->type),
        ", which m40llm cannot load (supported: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 "
        "Q2_K Q3_K Q4_K Q5_K Q6_K)"));
  }
  bool ok = t->n_dims <= 2 || (t->dims[2] == 1 && t->dims[3] == 1);
  for (size_t d = 0; d < shape.size() && ok; ++d) ok = t->dims[d] == shape[d];
  if (shape.size() == 1) ok = ok && t->dims[1] == 1;
  if (!ok) {
    std::string want, got;
    for (size_t d = 0; d < shape.size(); ++d) absl::StrAppend(&want, d ? ", " : "", shape[d]);
    for (uint32_t d = 0; d < t->n_dims; ++d) absl::StrAppend(&got, d ? ", " : "", t->dims[d]);
    return absl::InvalidArgumentError(absl::StrCat(f.path(), ": tensor '", name,
                                                   "' has shape [", got, "], expected [",
                                                   want, "]"));
  }
  return t;
}

class Loader {
 public:
  Loader(const GgufFile& f, WeightSink* sink, const ProgressFn& progress, int n_threads,
         WeightFormat format)
      : f_(f),
        sink_(sink),
        progress_(progress),
        pool_(n_threads),
        total_(LlamaTensorBytes(f)),
        format_(format) {}

  absl::Status Matrix(const std::string& name, WeightId id, int layer, int64_t rows,
                      int64_t cols) {
    ASSIGN_OR_RETURN(const GgufTensorInfo* t,
                     Expect(f_, name, {static_cast<uint64_t>(cols), static_cast<uint64_t>(rows)}));
    const auto traits = *TypeTraits(static_cast<uint32_t>(t->type));
    const size_t row_bytes = static_cast<size_t>(cols) / traits.block_elems * traits.block_bytes;
    const uint8_t* src = f_.TensorData(*t).data();
    if (format_ == WeightFormat::kNative && IsBlockQuantised(t->type)) {
      RETURN_IF_ERROR(sink_->QuantisedMatrix(id, layer, t->type, rows, cols,
                                             {src, row_bytes * static_cast<size_t>(rows)}));
      Done(*t);
      return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(uint16_t* dst, sink_->MatrixBuffer(id, layer, rows, cols));
    std::atomic<uint64_t> clamped{0};
    std::mutex err_mu;
    absl::Status err;
    pool_.ParallelFor(static_cast<size_t>(rows), 64, [&](size_t r0, size_t r1) {
      uint64_t local = 0;
      absl::Status s = DequantizeToF16(t->type, src + r0 * row_bytes, (r1 - r0) * cols,
                                       dst + r0 * cols, &local);
      clamped += local;
      if (!s.ok()) {
        std::lock_guard<std::mutex> lock(err_mu);
        err = s;
      }
    });
    if (!err.ok()) {
      return absl::Status(err.code(), absl::StrCat(f_.path(), ": tensor '", name, "': ",
                                                   err.message()));
    }
    if (clamped > 0) {
      spdlog::warn("{}: tensor '{}' ({}): {} values outside the FP16 range were clamped to "
                   "+-65504",
                   f_.path(), name, TypeName(t->type), clamped.load());
      clamped_ += clamped;
    }
    RETURN_IF_ERROR(sink_->MatrixDone(id, layer, rows, cols));
    Done(*t);
    return absl::OkStatus();
  }

  absl::Status Vector(const std::string& name, WeightId id, int layer, int64_t n) {
    ASSIGN_OR_RETURN(const GgufTensorInfo* t, Expect(f_, name, {static_cast<uint64_t>(n)}));
    std::vector<float> v(static_cast<size_t>(n));
    absl::Status s = DequantizeToF32(t->type, f_.TensorData(*t).data(), n, v.data());
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat(f_.path(), ": tensor '", name, "': ",
                                                 s.message()));
    }
    if (id == WeightId::kRopeFreqs) {
      for (float ff : v) {
        if (!(ff > 0.0f)) {
          return absl::InvalidArgumentError(absl::StrCat(
              f_.path(), ": tensor 'rope_freqs.weight' holds a non-positive factor"));
        }
      }
    }
    RETURN_IF_ERROR(sink_->Vector(id, layer, std::move(v)));
    Done(*t);
    return absl::OkStatus();
  }

  uint64_t clamped() const { return clamped_; }

 private:
  void Done(const GgufTensorInfo& t) {
    done_ += t.n_bytes;
    if (progress_) progress_({done_, total_, std::string(t.name)});
  }

  const GgufFile& f_;
  WeightSink* sink_;
  const ProgressFn& progress_;
  ThreadPool pool_;
  uint64_t total_ = 0, done_ = 0, clamped_ = 0;
  WeightFormat format_;
};

// Stores every weight in a LlamaModel's host vectors.
class HostSink : public WeightSink {
 public:
  explicit HostSink(LlamaModel* m) : m_(m) {}

  absl::StatusOr<uint16_t*> MatrixBuffer(WeightId id, int layer, int64_t rows,
                                         int64_t cols) override {
    WeightMatrix* mat = Find(id, layer);
    if (mat == nullptr) return absl::InternalError("HostSink: not a matrix");
    mat->type = GgmlType::kF16;
    mat->rows = rows;
    mat->cols = cols;
    mat->data.resize(static_cast<size_t>(rows * cols));
    return mat->data.data();
  }
  absl::Status QuantisedMatrix(WeightId id, int layer, GgmlType type, int64_t rows, int64_t cols,
                               std::span<const uint8_t> blocks) override {
    WeightMatrix* mat = Find(id, layer);
    if (mat == nullptr) return absl::InternalError("HostSink: not a matrix");
    mat->type = type;
    mat->rows = rows;
    mat->cols = cols;
    mat->row_bytes = blocks.size() / static_cast<size_t>(rows);
    mat->blocks.assign(blocks.begin(), blocks.end());
    return absl::OkStatus();
  }
  absl::Status MatrixDone(WeightId, int, int64_t, int64_t) override { return absl::OkStatus(); }
  absl::Status Vector(WeightId id, int layer, std::vector<float> values) override {
    switch (id) {
      case WeightId::kOutputNorm: m_->output_norm = std::move(values); break;
      case WeightId::kRopeFreqs: m_->rope_freqs = std::move(values); break;
      case WeightId::kAttnNorm: m_->layers[layer].attn_norm = std::move(values); break;
      case WeightId::kFfnNorm: m_->layers[layer].ffn_norm = std::move(values); break;
      case WeightId::kBq: m_->layers[layer].bq = std::move(values); break;
      case WeightId::kBk: m_->layers[layer].bk = std::move(values); break;
      case WeightId::kBv: m_->layers[layer].bv = std::move(values); break;
      default: return absl::InternalError("HostSink: not a vector");
    }
    return absl::OkStatus();
  }

 private:
  WeightMatrix* Find(WeightId id, int layer) {
    switch (id) {
      case WeightId::kTokenEmbd: return &m_->token_embd;
      case WeightId::kOutput: return &m_->output;
      case WeightId::kWq: return &m_->layers[layer].wq;
      case WeightId::kWk: return &m_->layers[layer].wk;
      case WeightId::kWv: return &m_->layers[layer].wv;
      case WeightId::kWo: return &m_->layers[layer].wo;
      case WeightId::kGate: return &m_->layers[layer].w_gate;
      case WeightId::kUp: return &m_->layers[layer].w_up;
      case WeightId::kDown: return &m_->layers[layer].w_down;
      default: return nullptr;
    }
  }
  LlamaModel* m_;
};

}  // namespace

uint64_t LlamaTensorBytes(const GgufFile& file) {
  uint64_t total = 0;
  for (const GgufTensorInfo& t : file.tensors()) total += t.n_bytes;
  return total;
}

absl::Status WeightSink::QuantisedMatrix(WeightId, int, GgmlType type, int64_t, int64_t,
                                         std::span<const uint8_t>) {
  return absl::UnimplementedError(
      absl::StrCat("this backend cannot hold ", TypeName(type), " weights in their blocks"));
}

const char* WeightFormatName(WeightFormat f) { return f == WeightFormat::kNative ? "native" : "f16"; }

absl::StatusOr<WeightFormat> ParseWeightFormat(const std::string& name) {
  if (name == "native") return WeightFormat::kNative;
  if (name == "f16") return WeightFormat::kF16;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown weight format '", name, "': use native or f16"));
}

absl::Status StreamLlamaWeights(const GgufFile& file, const ModelConfig& c, WeightSink* sink,
                                const ProgressFn& progress, int n_threads, uint64_t* clamped,
                                WeightFormat format) {
  Loader ld(file, sink, progress, n_threads, format);
  RETURN_IF_ERROR(ld.Matrix("token_embd.weight", WeightId::kTokenEmbd, -1, c.n_vocab, c.n_embd));
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    RETURN_IF_ERROR(ld.Vector(p + "attn_norm.weight", WeightId::kAttnNorm, l, c.n_embd));
    RETURN_IF_ERROR(ld.Matrix(p + "attn_q.weight", WeightId::kWq, l, c.q_dim(), c.n_embd));
    RETURN_IF_ERROR(ld.Matrix(p + "attn_k.weight", WeightId::kWk, l, c.kv_dim(), c.n_embd));
    RETURN_IF_ERROR(ld.Matrix(p + "attn_v.weight", WeightId::kWv, l, c.kv_dim(), c.n_embd));
    if (c.qkv_bias) {
      RETURN_IF_ERROR(ld.Vector(p + "attn_q.bias", WeightId::kBq, l, c.q_dim()));
      RETURN_IF_ERROR(ld.Vector(p + "attn_k.bias", WeightId::kBk, l, c.kv_dim()));
      RETURN_IF_ERROR(ld.Vector(p + "attn_v.bias", WeightId::kBv, l, c.kv_dim()));
    }
    RETURN_IF_ERROR(ld.Matrix(p + "attn_output.weight", WeightId::kWo, l, c.n_embd, c.q_dim()));
    RETURN_IF_ERROR(ld.Vector(p + "ffn_norm.weight", WeightId::kFfnNorm, l, c.n_embd));
    RETURN_IF_ERROR(ld.Matrix(p + "ffn_gate.weight", WeightId::kGate, l, c.n_ff, c.n_embd));
    RETURN_IF_ERROR(ld.Matrix(p + "ffn_up.weight", WeightId::kUp, l, c.n_ff, c.n_embd));
    RETURN_IF_ERROR(ld.Matrix(p + "ffn_down.weight", WeightId::kDown, l, c.n_embd, c.n_ff));
  }
  RETURN_IF_ERROR(ld.Vector("output_norm.weight", WeightId::kOutputNorm, -1, c.n_embd));
  if (!c.tied_output) {
    RETURN_IF_ERROR(ld.Matrix("output.weight", WeightId::kOutput, -1, c.n_vocab, c.n_embd));
  }
  if (c.has_rope_freqs) {
    RETURN_IF_ERROR(ld.Vector("rope_freqs.weight", WeightId::kRopeFreqs, -1, c.n_rot / 2));
  }
  if (clamped != nullptr) *clamped = ld.clamped();
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Load(const GgufFile& file,
                                                            const ProgressFn& progress,
                                                            int n_threads, WeightFormat format) {
  auto m = std::unique_ptr<LlamaModel>(new LlamaModel());
  ASSIGN_OR_RETURN(m->config_, ReadModelConfig(file));
  m->layers.resize(m->config_.n_layer);
  HostSink sink(m.get());
  RETURN_IF_ERROR(
      StreamLlamaWeights(file, m->config_, &sink, progress, n_threads, &m->clamped_, format));
  return m;
}

uint64_t LlamaModel::weight_bytes() const {
  auto mat = [](const WeightMatrix& m) { return m.bytes(); };
  auto vec = [](const std::vector<float>& v) { return v.size() * sizeof(float); };
  uint64_t b = mat(token_embd) + mat(output) + vec(output_norm) + vec(rope_freqs);
  for (const LayerWeights& w : layers) {
    b += vec(w.attn_norm) + vec(w.ffn_norm) + vec(w.bq) + vec(w.bk) + vec(w.bv) + mat(w.wq) +
         mat(w.wk) + mat(w.wv) + mat(w.wo) +
         mat(w.w_gate) + mat(w.w_up) + mat(w.w_down);
  }
  return b;
}

}  // namespace m40llm
