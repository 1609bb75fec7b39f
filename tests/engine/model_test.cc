// Llama config parsing and weight loading: required keys, shapes, errors for
// unsupported architectures and tensor types, BF16 clamping.
#include "engine/model.h"

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "engine/fp16.h"
#include "engine/gguf_writer.h"
#include "engine/quantize.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace m40llm {
namespace {

using ::testing::HasSubstr;

constexpr int kEmbd = 32, kFf = 64, kVocab = 40, kHead = 4, kHeadKv = 2, kLayers = 1;

std::string F32Bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

std::vector<float> Ramp(size_t n, float scale) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * std::sin(0.37f * static_cast<float>(i) + 1.0f);
  return v;
}

// A minimal valid llama file; `skip_key` / `skip_tensor` leave one item out,
// and `matrix_type` sets the type of blk.0.attn_q.weight.
struct Builder {
  std::string skip_key, skip_tensor, arch = "llama";
  GgmlType matrix_type = GgmlType::kF16;
  std::string bf16_override;  // raw bytes for attn_q when set

  std::unique_ptr<GgufFile> Build(std::string* storage) const {
    GgufWriter w;
    auto u32 = [&](const std::string& k, uint32_t v) {
      if (k != skip_key) w.AddUint32(k, v);
    };
    if (skip_key != "general.architecture") w.AddString("general.architecture", arch);
    u32("llama.context_length", 128);
    u32("llama.embedding_length", kEmbd);
    u32("llama.block_count", kLayers);
    u32("llama.feed_forward_length", kFf);
    u32("llama.attention.head_count", kHead);
    u32("llama.attention.head_count_kv", kHeadKv);
    if (skip_key != "eps") w.AddFloat32("llama.attention.layer_norm_rms_epsilon", 1e-6f);
    w.AddFloat32("llama.rope.freq_base", 20000.0f);
    w.AddString("llama.rope.scaling.type", "linear");
    w.AddFloat32("llama.rope.scaling.factor", 2.0f);
    u32("tokenizer.ggml.bos_token_id", 1);
    u32("tokenizer.ggml.eos_token_id", 2);
    auto mat = [&](const std::string& name, int rows, int cols, GgmlType t) {
      if (name == skip_tensor) return;
      std::string bytes;
      if (name == "blk.0.attn_q.weight" && !bf16_override.empty()) {
        bytes = bf16_override;
      } else {
        auto q = QuantizeFromF32(t, Ramp(size_t(rows) * cols, 0.1f).data(), size_t(rows) * cols);
        ASSERT_TRUE(q.ok()) << q.status();
        bytes = *q;
      }
      ASSERT_TRUE(w.AddTensor(name, t, {uint64_t(cols), uint64_t(rows)}, bytes).ok());
    };
    auto vec = [&](const std::string& name, int n) {
      if (name == skip_tensor) return;
      ASSERT_TRUE(w.AddTensor(name, GgmlType::kF32, {uint64_t(n)}, F32Bytes(Ramp(n, 1.0f))).ok());
    };
    const int hd = kEmbd / kHead;
    mat("token_embd.weight", kVocab, kEmbd, GgmlType::kF16);
    vec("blk.0.attn_norm.weight", kEmbd);
    mat("blk.0.attn_q.weight", kEmbd, kEmbd, matrix_type);
    mat("blk.0.attn_k.weight", hd * kHeadKv, kEmbd, GgmlType::kF16);
    mat("blk.0.attn_v.weight", hd * kHeadKv, kEmbd, GgmlType::kF16);
    mat("blk.0.attn_output.weight", kEmbd, kEmbd, GgmlType::kF16);
    vec("blk.0.ffn_norm.weight", kEmbd);
    mat("blk.0.ffn_gate.weight", kFf, kEmbd, GgmlType::kF16);
    mat("blk.0.ffn_up.weight", kFf, kEmbd, GgmlType::kF16);
    mat("blk.0.ffn_down.weight", kEmbd, kFf, GgmlType::kF16);
    vec("output_norm.weight", kEmbd);
    mat("output.weight", kVocab, kEmbd, GgmlType::kF16);
    *storage = w.Serialize();
    auto f = GgufFile::FromBuffer("test.gguf", reinterpret_cast<const uint8_t*>(storage->data()),
                                  storage->size());
    EXPECT_TRUE(f.ok()) << f.status();
    return f.ok() ? std::move(*f) : nullptr;
  }
};

// Copies `base` (its uint32, float32 and string keys and all tensors) and
// adds one more tensor; returns the serialised file.
std::string CopyWithTensor(const GgufFile& base, const std::string& name, GgmlType type,
                           std::vector<uint64_t> dims, std::string data) {
  GgufWriter w;
  for (const GgufKV& kv : base.metadata()) {
    const std::string key(kv.key);
    if (kv.value.type == GgufValueType::kString) w.AddString(key, kv.value.str);
    if (kv.value.type == GgufValueType::kUint32) w.AddUint32(key, static_cast<uint32_t>(kv.value.u));
    if (kv.value.type == GgufValueType::kFloat32) w.AddFloat32(key, static_cast<float>(kv.value.f));
  }
  for (const GgufTensorInfo& t : base.tensors()) {
    auto d = base.TensorData(t);
    std::vector<uint64_t> td(t.dims, t.dims + t.n_dims);
    EXPECT_TRUE(w.AddTensor(std::string(t.name), t.type, td,
                            std::string(reinterpret_cast<const char*>(d.data()), d.size()))
                    .ok());
  }
  EXPECT_TRUE(w.AddTensor(name, type, std::move(dims), std::move(data)).ok());
  return w.Serialize();
}

TEST(ModelConfig, ReadsEveryField) {
  std::string buf;
  auto f = Builder{}.Build(&buf);
  ASSERT_NE(f, nullptr);
  auto c = ReadModelConfig(*f);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->n_embd, kEmbd);
  EXPECT_EQ(c->n_vocab, kVocab);
  EXPECT_EQ(c->n_layer, kLayers);
  EXPECT_EQ(c->n_head, kHead);
  EXPECT_EQ(c->n_head_kv, kHeadKv);
  EXPECT_EQ(c->head_dim, kEmbd / kHead);
  EXPECT_EQ(c->n_rot, kEmbd / kHead);
  EXPECT_EQ(c->n_ff, kFf);
  EXPECT_EQ(c->n_ctx_train, 128);
  EXPECT_FLOAT_EQ(c->rope_freq_base, 20000.0f);
  EXPECT_FLOAT_EQ(c->rope_freq_scale, 0.5f);
  EXPECT_FLOAT_EQ(c->rms_eps, 1e-6f);
  EXPECT_FALSE(c->tied_output);
}

TEST(ModelConfig, TiedOutputWhenOutputWeightIsAbsent) {
  Builder b;
  b.skip_tensor = "output.weight";
  std::string buf;
  auto f = b.Build(&buf);
  ASSERT_NE(f, nullptr);
  auto m = LlamaModel::Load(*f);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE((*m)->config().tied_output);
  EXPECT_EQ(&(*m)->lm_head(), &(*m)->token_embd);
}

TEST(ModelConfig, MissingKeyIsNamed) {
  for (const char* key : {"llama.embedding_length", "llama.block_count",
                          "llama.feed_forward_length", "llama.attention.head_count",
                          "llama.context_length"}) {
    Builder b;
    b.skip_key = key;
    std::string buf;
    auto f = b.Build(&buf);
    ASSERT_NE(f, nullptr);
    auto c = ReadModelConfig(*f);
    ASSERT_FALSE(c.ok()) << key;
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(key));
  }
}

TEST(ModelConfig, UnsupportedArchitectureListsSupported) {
  Builder b;
  b.arch = "mamba";
  std::string buf;
  auto f = b.Build(&buf);
  ASSERT_NE(f, nullptr);
  auto c = ReadModelConfig(*f);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("'mamba'"));
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("supported: llama"));
  b.skip_key = "general.architecture";
  f = b.Build(&buf);
  c = ReadModelConfig(*f);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("general.architecture"));
}

TEST(ModelLoad, MissingTensorIsNamed) {
  Builder b;
  b.skip_tensor = "blk.0.ffn_up.weight";
  std::string buf;
  auto f = b.Build(&buf);
  ASSERT_NE(f, nullptr);
  auto m = LlamaModel::Load(*f);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("blk.0.ffn_up.weight"));
}

TEST(ModelLoad, UnsupportedTensorTypeNamesTensorAndType) {
  // An IQ4_NL tensor: a valid GGUF type (32-value blocks of 18 bytes) that
  // m40llm does not dequantise.
  Builder b;
  b.skip_tensor = "blk.0.attn_q.weight";
  std::string buf;
  auto base = b.Build(&buf);
  ASSERT_NE(base, nullptr);
  std::string bytes = CopyWithTensor(*base, "blk.0.attn_q.weight", GgmlType::kIQ4_NL,
                                     {kEmbd, kEmbd}, std::string(kEmbd * kEmbd / 32 * 18, '\x11'));
  auto f = GgufFile::FromBuffer("iq.gguf", reinterpret_cast<const uint8_t*>(bytes.data()),
                                bytes.size());
  ASSERT_TRUE(f.ok()) << f.status();
  auto m = LlamaModel::Load(**f);
  ASSERT_FALSE(m.ok());
  const std::string msg(m.status().message());
  EXPECT_THAT(msg, HasSubstr("blk.0.attn_q.weight"));
  EXPECT_THAT(msg, HasSubstr("IQ4_NL"));
}

TEST(ModelLoad, Bf16OutsideHalfRangeIsClampedAndCounted) {
  // attn_q in BF16 with three values beyond FP16's 65504.
  std::vector<uint16_t> bf(kEmbd * kEmbd);
  auto to_bf16 = [](float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return static_cast<uint16_t>(u >> 16);  // exact for these values
  };
  for (size_t i = 0; i < bf.size(); ++i) bf[i] = to_bf16(0.25f);
  bf[3] = to_bf16(1e6f);
  bf[100] = to_bf16(-3e38f);
  bf[200] = to_bf16(65536.0f);
  Builder b;
  b.matrix_type = GgmlType::kBF16;
  b.bf16_override.assign(reinterpret_cast<const char*>(bf.data()), bf.size() * 2);
  std::string buf;
  auto f = b.Build(&buf);
  ASSERT_NE(f, nullptr);
  auto m = LlamaModel::Load(*f);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->clamped_values(), 3u);
  const auto& q = (*m)->layers[0].wq.data;
  EXPECT_EQ(HalfToFloat(q[3]), 65504.0f);
  EXPECT_EQ(HalfToFloat(q[100]), -65504.0f);
  EXPECT_EQ(HalfToFloat(q[200]), 65504.0f);
  EXPECT_EQ(HalfToFloat(q[0]), 0.25f);
}

TEST(ModelLoad, WrongShapeIsReported) {
  Builder b;
  b.skip_tensor = "blk.0.ffn_down.weight";
  std::string buf;
  auto base = b.Build(&buf);
  ASSERT_NE(base, nullptr);
  // ffn_down with its dims swapped.
  std::string bytes = CopyWithTensor(*base, "blk.0.ffn_down.weight", GgmlType::kF16,
                                     {kEmbd, kFf}, std::string(kEmbd * kFf * 2, '\0'));
  auto f = GgufFile::FromBuffer("shape.gguf", reinterpret_cast<const uint8_t*>(bytes.data()),
                                bytes.size());
  ASSERT_TRUE(f.ok()) << f.status();
  auto m = LlamaModel::Load(**f);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("blk.0.ffn_down.weight"));
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("expected [64, 32]"));
}

}  // namespace
}  // namespace m40llm
