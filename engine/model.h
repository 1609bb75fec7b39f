// The llama-family model (architectures `llama` and `qwen2`): hyperparameters
// read from GGUF metadata and the weights, dequantised at load into FP16
// storage (norms and biases stay FP32). qwen2 is llama with Q/K/V biases and
// NeoX-style RoPE.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/ggml_types.h"
#include "engine/gguf.h"

namespace m40llm {

// Architectures this build can run (GGUF `general.architecture`).
inline constexpr const char* kSupportedArchitectures = "llama, qwen2";

struct ModelConfig {
  std::string arch;
  std::string name;           // general.name, may be empty
  int32_t n_vocab = 0;
  int32_t n_embd = 0;
  int32_t n_layer = 0;
  int32_t n_head = 0;
  int32_t n_head_kv = 0;      // == n_head for MHA, 1 for MQA
  int32_t head_dim = 0;       // key/value length per head
  int32_t n_ff = 0;
  int32_t n_ctx_train = 0;
  int32_t n_rot = 0;          // rotary dimensions (<= head_dim)
  float rope_freq_base = 10000.0f;
  float rope_freq_scale = 1.0f;  // 1 / linear scaling factor
  float rms_eps = 1e-5f;
  bool tied_output = false;      // no output.weight: reuse token_embd
  bool has_rope_freqs = false;   // Llama 3 rope_freqs.weight present
  bool rope_neox = false;        // NeoX RoPE: rotate (x[i], x[i + n_rot/2]), not adjacent pairs
  bool qkv_bias = false;         // Q/K/V projections add a bias (qwen2)

  int32_t q_dim() const { return n_head * head_dim; }
  int32_t kv_dim() const { return n_head_kv * head_dim; }
};

// Reads and validates the config. Errors name the missing or bad key and,
// for an unsupported architecture, list the supported ones. Keys it does not
// use (general.*, tokenizer.*, anything unknown) are ignored; special token
// ids belong to the tokenizer (LoadVocab). RoPE scaling follows llama.cpp:
// `rope.scaling.type` none (no scaling), linear (the default when the key is
// absent: factor `rope.scaling.factor`, else the older `rope.scale_linear`,
// else 1) or llama3 (carried by rope_freqs.weight); yarn and longrope are
// refused as unsupported, by name.
absl::StatusOr<ModelConfig> ReadModelConfig(const GgufFile& f);

// How a model's quantised matrices are held.
enum class WeightFormat {
  kNative,  // in their GGUF blocks, dequantised to FP32 as they are used
  kF16,     // dequantised once, at load, to FP16
};

// "native" or "f16".
const char* WeightFormatName(WeightFormat f);
// The format `name` names; InvalidArgument for anything but native and f16.
absl::StatusOr<WeightFormat> ParseWeightFormat(const std::string& name);

// A 2-D weight matrix: `rows` rows of `cols` values (GGUF ne1 x ne0), as FP16
// values (type kF16) or, with WeightFormat::kNative, as the GGUF blocks of a
// quantised type exactly as the file stores them, row after row.
struct WeightMatrix {
  GgmlType type = GgmlType::kF16;  // kF16, or a block-quantised type
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<uint16_t> data;      // (rows, cols) FP16 bits, when type == kF16
  std::vector<uint8_t> blocks;     // (rows, row_bytes) when quantised
  size_t row_bytes = 0;            // bytes of one row's blocks (quantised)

  bool quantised() const { return type != GgmlType::kF16; }
  // Bytes of weights held.
  uint64_t bytes() const { return data.size() * sizeof(uint16_t) + blocks.size(); }
};

struct LayerWeights {
  std::vector<float> attn_norm;  // (n_embd)
  WeightMatrix wq;               // (q_dim, n_embd)
  WeightMatrix wk;               // (kv_dim, n_embd)
  WeightMatrix wv;               // (kv_dim, n_embd)
  std::vector<float> bq;         // (q_dim) or empty: no biases
  std::vector<float> bk;         // (kv_dim) or empty
  std::vector<float> bv;         // (kv_dim) or empty
  WeightMatrix wo;               // (n_embd, q_dim)
  std::vector<float> ffn_norm;   // (n_embd)
  WeightMatrix w_gate;           // (n_ff, n_embd)
  WeightMatrix w_up;             // (n_ff, n_embd)
  WeightMatrix w_down;           // (n_embd, n_ff)
};

struct LoadProgress {
  uint64_t bytes_done = 0;
  uint64_t bytes_total = 0;
  std::string tensor;
};
using ProgressFn = std::function<void(const LoadProgress&)>;

// Which weight a tensor is: globals have layer -1.
enum class WeightId : int {
  kTokenEmbd = 0,  // (n_vocab, n_embd) matrix
  kOutput,         // (n_vocab, n_embd) matrix; absent when tied
  kOutputNorm,     // (n_embd) vector
  kRopeFreqs,      // (n_rot / 2) vector; only with has_rope_freqs
  kAttnNorm,       // (n_embd) vector, per layer
  kWq,             // (q_dim, n_embd), per layer
  kWk,             // (kv_dim, n_embd)
  kWv,             // (kv_dim, n_embd)
  kWo,             // (n_embd, q_dim)
  kFfnNorm,        // (n_embd) vector
  kGate,           // (n_ff, n_embd)
  kUp,             // (n_ff, n_embd)
  kDown,           // (n_embd, n_ff)
  kBq,             // (q_dim) vector, per layer; only with qkv_bias
  kBk,             // (kv_dim) vector
  kBv,             // (kv_dim) vector
};

// Receives the weights one tensor at a time as they are dequantised, so that
// a device backend can upload each through one staging buffer instead of
// holding a second full copy of the model in host memory.
class WeightSink {
 public:
  virtual ~WeightSink() = default;
  // Where to write a (rows, cols) FP16 matrix; it must stay valid and
  // unread until MatrixDone for the same weight.
  virtual absl::StatusOr<uint16_t*> MatrixBuffer(WeightId id, int layer, int64_t rows,
                                                 int64_t cols) = 0;
  // The buffer from MatrixBuffer now holds the matrix.
  virtual absl::Status MatrixDone(WeightId id, int layer, int64_t rows, int64_t cols) = 0;
  // A FP32 vector (norm weights, rope frequency factors).
  virtual absl::Status Vector(WeightId id, int layer, std::vector<float> values) = 0;
  // A block-quantised matrix, its `rows` rows of blocks as the file stores
  // them (`blocks` is valid only during the call); only with
  // WeightFormat::kNative. The default refuses.
  virtual absl::Status QuantisedMatrix(WeightId id, int layer, GgmlType type, int64_t rows,
                                       int64_t cols, std::span<const uint8_t> blocks);
};

// Reads, checks and dequantises every weight of `file` (whose config is `c`)
// into `sink`, in file-independent order: token_embd, then per layer
// attn_norm, wq, wk, wv, (with qkv_bias: bq, bk, bv), wo, ffn_norm, gate, up, down, then output_norm,
// output (unless tied), rope_freqs (if present). `progress` (optional) is
// called after each tensor; `clamped` (optional) receives the number of
// values clamped into the FP16 range.
// With WeightFormat::kNative, quantised matrices go to
// sink->QuantisedMatrix as they are; F16, BF16 and F32 ones are still FP16.
absl::Status StreamLlamaWeights(const GgufFile& file, const ModelConfig& c, WeightSink* sink,
                                const ProgressFn& progress = nullptr, int n_threads = 0,
                                uint64_t* clamped = nullptr,
                                WeightFormat format = WeightFormat::kF16);

// Bytes of the GGUF tensors StreamLlamaWeights reads (the progress total).
uint64_t LlamaTensorBytes(const GgufFile& file);

// A loaded model with host-resident weights: quantised matrices in their
// blocks (kNative, the default) or FP16.
class LlamaModel {
 public:
  // Loads every tensor; `progress` (optional) is called after each tensor.
  // `n_threads` parallelises dequantisation (<= 0: all hardware threads).
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(
      const GgufFile& file, const ProgressFn& progress = nullptr, int n_threads = 0,
      WeightFormat format = WeightFormat::kNative);

  const ModelConfig& config() const { return config_; }

  WeightMatrix token_embd;              // (n_vocab, n_embd)
  std::vector<LayerWeights> layers;     // (n_layer)
  std::vector<float> output_norm;       // (n_embd)
  WeightMatrix output;                  // (n_vocab, n_embd); empty when tied
  std::vector<float> rope_freqs;        // (n_rot / 2) or empty

  const WeightMatrix& lm_head() const { return config_.tied_output ? token_embd : output; }
  // Bytes of weights held (FP16 values, quantised blocks, FP32 vectors).
  uint64_t weight_bytes() const;
  // Number of values clamped into FP16 range while loading (BF16/F32 only).
  uint64_t clamped_values() const { return clamped_; }

 private:
  ModelConfig config_;
  uint64_t clamped_ = 0;
};

}  // namespace m40llm
