// Random llama GGUF writer (streamed, multi-threaded), the real-model shape
// presets and the cached demo model.
#include "engine/demo_model.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/demo_vocab.h"
#include "engine/gguf_writer.h"
#include "engine/quantize.h"
#include "engine/status.h"
#include "engine/thread_pool.h"
#include "engine/tokenizer.h"

namespace m40llm {
namespace {

// SplitMix64 over (seed, tensor index, element): every value is a pure
// function of its coordinates, so tensors and row blocks can be generated
// independently and in any order.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The per-tensor half of the generator, computed once per tensor.
uint64_t TensorKey(uint64_t seed, uint64_t tensor) {
  return Mix(seed ^ (tensor * 0x632be59bd9b4e019ull));
}

// Element `i` of the tensor keyed by `key`: uniform in [-1, 1).
float UniformAt(uint64_t key, uint64_t i) {
  const uint64_t r = Mix(key + i);
  return static_cast<float>(static_cast<double>(r >> 40) / static_cast<double>(1ull << 23) - 1.0);
}

float Uniform(uint64_t seed, uint64_t tensor, uint64_t i) {
  return UniformAt(TensorKey(seed, tensor), i);
}

// Elements generated per work item: 4 MiB of floats per thread, plus the
// encoded copy.
constexpr uint64_t kBlockElems = uint64_t{1} << 20;

// A weight matrix of `rows` x `cols` (cols = ne0, the innermost) filled with
// gain * sqrt(3 / cols) * Uniform(seed, id, element): a unit-RMS input gives
// outputs of variance gain^2.
struct MatrixGen {
  uint64_t id;
  uint64_t rows, cols;
  GgmlType type;
  float gain;
};

// Generates `m` in blocks of whole rows on `pool` and writes each block's
// encoding at its offset. Every type's blocks lie within a row (ne0 is a
// multiple of the block size), so encoding row blocks separately gives the
// same bytes as encoding the whole matrix.
absl::Status FillMatrix(const MatrixGen& m, uint64_t seed, ThreadPool& pool, GgufTensorSink& sink) {
  const uint64_t row_bytes = sink.size() / m.rows;
  const uint64_t rows_per_block = std::max<uint64_t>(1, kBlockElems / m.cols);
  const uint64_t n_blocks = (m.rows + rows_per_block - 1) / rows_per_block;
  const float a = m.gain * std::sqrt(3.0f / static_cast<float>(m.cols));
  const uint64_t key = TensorKey(seed, m.id);
  std::mutex mu;
  absl::Status first_error;
  std::atomic<bool> failed{false};
  pool.ParallelFor(n_blocks, 1, [&](size_t b0, size_t b1) {
    std::vector<float> v;
    for (size_t b = b0; b < b1 && !failed.load(std::memory_order_relaxed); ++b) {
      const uint64_t r0 = b * rows_per_block;
      const uint64_t r1 = std::min(m.rows, r0 + rows_per_block);
      const uint64_t first = r0 * m.cols;
      v.resize((r1 - r0) * m.cols);
      for (size_t i = 0; i < v.size(); ++i) v[i] = a * UniformAt(key, first + i);
      absl::Status s = [&]() -> absl::Status {
        ASSIGN_OR_RETURN(const std::string bytes, QuantizeFromF32(m.type, v.data(), v.size()));
        return sink.Write(r0 * row_bytes, bytes);
      }();
      if (!s.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (first_error.ok()) first_error = std::move(s);
        failed.store(true, std::memory_order_relaxed);
      }
    }
  });
  return first_error;
}

void WriteVocab(const Vocab& v, GgufWriter& w) {
  w.AddString("tokenizer.ggml.model", v.model);
  if (!v.pre.empty()) w.AddString("tokenizer.ggml.pre", v.pre);
  w.AddStringArray("tokenizer.ggml.tokens", v.tokens);
  if (!v.scores.empty()) w.AddFloat32Array("tokenizer.ggml.scores", v.scores);
  if (!v.token_type.empty()) w.AddInt32Array("tokenizer.ggml.token_type", v.token_type);
  if (!v.merges.empty()) w.AddStringArray("tokenizer.ggml.merges", v.merges);
  if (v.bos >= 0) w.AddUint32("tokenizer.ggml.bos_token_id", v.bos);
  if (v.eos >= 0) w.AddUint32("tokenizer.ggml.eos_token_id", v.eos);
  if (v.unk >= 0) w.AddUint32("tokenizer.ggml.unknown_token_id", v.unk);
  if (v.pad >= 0) w.AddUint32("tokenizer.ggml.padding_token_id", v.pad);
  w.AddBool("tokenizer.ggml.add_bos_token", v.add_bos);
  w.AddBool("tokenizer.ggml.add_eos_token", v.add_eos);
  if (v.model == "llama") w.AddBool("tokenizer.ggml.add_space_prefix", v.add_space_prefix);
}

}  // namespace

absl::Status WriteRandomLlama(const RandomModelSpec& s, const std::string& path) {
  if (s.n_embd <= 0 || s.n_layer <= 0 || s.n_head <= 0 || s.n_head_kv <= 0 || s.n_ff <= 0 ||
      s.n_ctx <= 0) {
    return absl::InvalidArgumentError("model dimensions must be positive");
  }
  if (s.n_vocab != 0 && s.n_vocab < kDemoVocabSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "n_vocab (", s.n_vocab, ") must be 0 (the demo vocabulary) or at least ", kDemoVocabSize));
  }
  if (s.n_embd % s.n_head != 0 || s.n_head % s.n_head_kv != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "n_embd (", s.n_embd, ") must divide by n_head (", s.n_head,
        ") and n_head by n_head_kv (", s.n_head_kv, ")"));
  }
  const int head_dim = s.n_embd / s.n_head;
  if (head_dim % 2 != 0) return absl::InvalidArgumentError("head_dim must be even");
  const auto traits = TypeTraits(static_cast<uint32_t>(s.weight_type));
  if (!traits || !IsSupportedWeightType(s.weight_type)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot write weights of type ", TypeName(s.weight_type)));
  }
  if (s.n_embd % traits->block_elems != 0 || s.n_ff % traits->block_elems != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "n_embd and n_ff must be multiples of ", traits->block_elems, " for ",
        TypeName(s.weight_type)));
  }

  const Vocab vocab = MakeDemoVocab(s.n_vocab);
  const int n_vocab = static_cast<int>(vocab.tokens.size());
  GgufWriter w;
  if (s.arch != "llama" && s.arch != "qwen2") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown architecture '", s.arch, "' (known: llama, qwen2)"));
  }
  const std::string& a = s.arch;
  w.AddString("general.architecture", a);
  w.AddString("general.name", s.name);
  w.AddString("general.description",
              "random weights from m40llm mkmodel: generated text is gibberish");
  w.AddUint32("general.file_type", 1);
  w.AddUint32(a + ".context_length", s.n_ctx);
  w.AddUint32(a + ".embedding_length", s.n_embd);
  w.AddUint32(a + ".block_count", s.n_layer);
  w.AddUint32(a + ".feed_forward_length", s.n_ff);
  w.AddUint32(a + ".attention.head_count", s.n_head);
  w.AddUint32(a + ".attention.head_count_kv", s.n_head_kv);
  w.AddUint32(a + ".rope.dimension_count", head_dim);
  w.AddFloat32(a + ".rope.freq_base", s.rope_freq_base);
  if (s.rope_scale_linear != 1.0f) {
    w.AddString(a + ".rope.scaling.type", "linear");
    w.AddFloat32(a + ".rope.scaling.factor", s.rope_scale_linear);
  }
  w.AddFloat32(a + ".attention.layer_norm_rms_epsilon", s.rms_eps);
  WriteVocab(vocab, w);
  if (s.extra_metadata) s.extra_metadata(w);

  // Matrices are declared here and generated while the file is written
  // (keyed by their index in the writer); the small norm vectors are built
  // in memory. Generator ids count every random tensor in file order.
  uint64_t tensor_id = 0;
  absl::flat_hash_map<size_t, MatrixGen> matrices;
  auto matrix = [&](const std::string& name, int rows, int cols, GgmlType type,
                    float gain) -> absl::Status {
    const MatrixGen m{++tensor_id, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), type,
                      gain};
    matrices.emplace(w.tensor_count(), m);
    return w.AddTensorInfo(name, type, {m.cols, m.rows});
  };
  // Norm weights around 1 (bias 1, spread 0.1); biases around 0.
  auto vector = [&](const std::string& name, int n, float center, float spread) -> absl::Status {
    const uint64_t id = ++tensor_id;
    std::vector<float> v(n);
    for (int i = 0; i < n; ++i) v[i] = center + spread * Uniform(s.seed, id, i);
    ASSIGN_OR_RETURN(std::string bytes, QuantizeFromF32(GgmlType::kF32, v.data(), v.size()));
    return w.AddTensor(name, GgmlType::kF32, {static_cast<uint64_t>(n)}, std::move(bytes));
  };
  auto norm = [&](const std::string& name, int n) { return vector(name, n, 1.0f, 0.1f); };

  const int q_dim = s.n_embd, kv_dim = head_dim * s.n_head_kv;
  // Embedding entries get unit variance (gain sqrt(cols) cancels the 1/cols).
  RETURN_IF_ERROR(matrix("token_embd.weight", n_vocab, s.n_embd, s.weight_type,
                         std::sqrt(static_cast<float>(s.n_embd))));
  if (s.rope_freqs) {
    std::vector<float> ff(head_dim / 2);
    for (int i = 0; i < head_dim / 2; ++i) ff[i] = i < head_dim / 4 ? 1.0f : 1.0f + i * 0.25f;
    ASSIGN_OR_RETURN(std::string bytes, QuantizeFromF32(GgmlType::kF32, ff.data(), ff.size()));
    RETURN_IF_ERROR(w.AddTensor("rope_freqs.weight", GgmlType::kF32,
                                {static_cast<uint64_t>(ff.size())}, std::move(bytes)));
  }
  for (int l = 0; l < s.n_layer; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    RETURN_IF_ERROR(norm(p + "attn_norm.weight", s.n_embd));
    RETURN_IF_ERROR(matrix(p + "attn_q.weight", q_dim, s.n_embd, s.weight_type, 1.0f));
    RETURN_IF_ERROR(matrix(p + "attn_k.weight", kv_dim, s.n_embd, s.weight_type, 1.0f));
    RETURN_IF_ERROR(matrix(p + "attn_v.weight", kv_dim, s.n_embd, s.weight_type, 1.0f));
    if (a == "qwen2") {
      RETURN_IF_ERROR(vector(p + "attn_q.bias", q_dim, 0.0f, 0.5f));
      RETURN_IF_ERROR(vector(p + "attn_k.bias", kv_dim, 0.0f, 0.5f));
      RETURN_IF_ERROR(vector(p + "attn_v.bias", kv_dim, 0.0f, 0.5f));
    }
    RETURN_IF_ERROR(matrix(p + "attn_output.weight", s.n_embd, q_dim, s.weight_type, 0.5f));
    RETURN_IF_ERROR(norm(p + "ffn_norm.weight", s.n_embd));
    RETURN_IF_ERROR(matrix(p + "ffn_gate.weight", s.n_ff, s.n_embd, s.weight_type, 1.0f));
    RETURN_IF_ERROR(matrix(p + "ffn_up.weight", s.n_ff, s.n_embd, s.weight_type, 1.0f));
    RETURN_IF_ERROR(matrix(p + "ffn_down.weight", s.n_embd, s.n_ff, s.weight_type, 0.5f));
  }
  RETURN_IF_ERROR(norm("output_norm.weight", s.n_embd));
  if (!s.tied_output) {
    RETURN_IF_ERROR(matrix("output.weight", n_vocab, s.n_embd, s.weight_type, 4.0f));
  }

  ThreadPool pool(s.threads);
  return w.WriteFileStreaming(path, [&](size_t index, GgufTensorSink& sink) -> absl::Status {
    const auto it = matrices.find(index);
    if (it == matrices.end()) {
      return absl::InternalError(absl::StrCat("WriteRandomLlama: no generator for tensor ", index));
    }
    return FillMatrix(it->second, s.seed, pool, sink);
  });
}

absl::StatusOr<RandomModelSpec> RandomModelPreset(std::string_view name) {
  RandomModelSpec s;
  s.rope_freq_base = 10000.0f;
  s.rms_eps = 1e-5f;
  s.n_vocab = 32000;
  if (name == "tinyllama-1.1b") {
    s.name = "tinyllama-1.1b shape (random weights)";
    s.n_embd = 2048;
    s.n_layer = 22;
    s.n_head = 32;
    s.n_head_kv = 4;
    s.n_ff = 5632;
    s.n_ctx = 2048;
    return s;
  }
  if (name == "llama2-7b") {
    s.name = "llama2-7b shape (random weights)";
    s.n_embd = 4096;
    s.n_layer = 32;
    s.n_head = 32;
    s.n_head_kv = 32;
    s.n_ff = 11008;
    s.n_ctx = 4096;
    return s;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown preset '", Sv(name),
                   "' (known: ", absl::StrJoin(RandomModelPresetNames(), ", "), ")"));
}

std::vector<std::string> RandomModelPresetNames() { return {"tinyllama-1.1b", "llama2-7b"}; }

std::string CacheDir() {
  if (const char* d = std::getenv("M40LLM_CACHE_DIR"); d && *d) return d;
  if (const char* d = std::getenv("XDG_CACHE_HOME"); d && *d) return absl::StrCat(d, "/m40llm");
  if (const char* h = std::getenv("HOME"); h && *h) return absl::StrCat(h, "/.cache/m40llm");
  return "/tmp/m40llm-cache";
}

absl::StatusOr<std::string> EnsureDemoModel() {
  const std::string dir = CacheDir();
  // Bump the version tag whenever the demo spec or vocabulary changes.
  const std::string path = dir + "/demo-llama-v1.gguf";
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) return path;
  // mkdir -p
  for (size_t i = 1; i <= dir.size(); ++i) {
    if (i == dir.size() || dir[i] == '/') {
      const std::string part = dir.substr(0, i);
      if (::mkdir(part.c_str(), 0755) != 0 && errno != EEXIST) {
        return absl::PermissionDeniedError(
            absl::StrCat("cannot create cache folder ", part, ": ", std::strerror(errno)));
      }
    }
  }
  RandomModelSpec spec;
  spec.name = "m40llm-demo (random weights)";
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  RETURN_IF_ERROR(WriteRandomLlama(spec, tmp));
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
  }
  return path;
}

}  // namespace m40llm
