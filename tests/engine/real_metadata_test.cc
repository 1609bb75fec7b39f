// The metadata real-world GGUF files carry, written with our own GgufWriter:
// special-token ids of -1 (llama.cpp's converters write that for "none") or
// past the vocabulary, missing scores and token types, tokens recognised by
// their text, extra end-of-generation ids, add_eos, keys nobody reads, and
// RoPE scaling. Each case follows what llama.cpp accepts and where it warns.
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/demo_model.h"
#include "engine/demo_vocab.h"
#include "engine/gguf.h"
#include "engine/gguf_writer.h"
#include "engine/model.h"
#include "engine/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/test_support.h"
#include "spdlog/sinks/ringbuffer_sink.h"
#include "spdlog/spdlog.h"

namespace m40llm {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A parsed file that keeps its bytes alive.
struct Parsed {
  std::string bytes;
  std::unique_ptr<GgufFile> file;
};

Parsed Parse(const GgufWriter& w) {
  Parsed p;
  p.bytes = w.Serialize();
  auto f = GgufFile::FromBuffer("real.gguf", reinterpret_cast<const uint8_t*>(p.bytes.data()),
                                p.bytes.size());
  EXPECT_TRUE(f.ok()) << f.status();
  if (f.ok()) p.file = std::move(*f);
  return p;
}

// The demo vocabulary as a vocabulary-only file, with or without its score
// and token-type arrays, and extra tokens appended (their ids follow the
// demo's 512).
GgufWriter VocabFile(bool scores, bool types, const std::vector<std::string>& extra = {}) {
  Vocab v = MakeDemoVocab();
  for (const std::string& t : extra) {
    v.tokens.push_back(t);
    v.scores.push_back(0.0f);
    v.token_type.push_back(static_cast<int32_t>(TokenType::kNormal));
  }
  GgufWriter w;
  w.AddString("general.architecture", "llama");
  w.AddString("tokenizer.ggml.model", "llama");
  w.AddStringArray("tokenizer.ggml.tokens", v.tokens);
  if (scores) w.AddFloat32Array("tokenizer.ggml.scores", v.scores);
  if (types) w.AddInt32Array("tokenizer.ggml.token_type", v.token_type);
  return w;
}

// Collects what the default logger prints while it lives.
class LogCapture {
 public:
  LogCapture() : sink_(std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(256)) {
    saved_ = spdlog::default_logger();
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink_));
  }
  ~LogCapture() { spdlog::set_default_logger(saved_); }
  std::vector<std::string> Lines() const { return sink_->last_formatted(); }
  // Lines that contain `text`.
  int Count(const std::string& text) const {
    int n = 0;
    for (const std::string& l : Lines()) n += l.find(text) != std::string::npos;
    return n;
  }

 private:
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink_;
  std::shared_ptr<spdlog::logger> saved_;
};

TEST(RealMetadata, SpecialIdsThatAreNoTokenAreAbsentWithOneWarningEach) {
  GgufWriter w = VocabFile(true, true);
  // stories260K writes padding as uint32 4294967295; others write int32 -1.
  w.AddUint32("tokenizer.ggml.padding_token_id", 4294967295u);
  w.AddInt32("tokenizer.ggml.seperator_token_id", -1);
  w.AddInt32("tokenizer.ggml.cls_token_id", -1);
  w.AddUint32("tokenizer.ggml.mask_token_id", 100000);
  w.AddInt32("tokenizer.ggml.unknown_token_id", -1);
  w.AddInt32("tokenizer.ggml.eot_token_id", -1);
  w.AddInt64("tokenizer.ggml.eom_token_id", -1);
  w.AddUint32("tokenizer.ggml.fim_pre_token_id", kDemoVocabSize);
  w.AddUint64("tokenizer.ggml.fim_pad_token_id", uint64_t{1} << 40);
  // BOS past the vocabulary keeps the SentencePiece default, as in llama.cpp.
  w.AddUint32("tokenizer.ggml.bos_token_id", 70000);
  Parsed p = Parse(w);
  ASSERT_NE(p.file, nullptr);
  LogCapture log;
  auto v = LoadVocab(*p.file);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->pad, -1);
  EXPECT_EQ(v->sep, -1);
  EXPECT_EQ(v->cls, -1);
  EXPECT_EQ(v->mask, -1);
  EXPECT_EQ(v->unk, 0);  // the default
  EXPECT_EQ(v->eot, -1);
  EXPECT_EQ(v->eom, -1);
  EXPECT_EQ(v->fim_pre, -1);
  EXPECT_EQ(v->fim_pad, -1);
  EXPECT_EQ(v->bos, 1);  // the default
  EXPECT_EQ(v->eos, 2);
  for (const char* key :
       {"padding_token_id' = -1", "seperator_token_id' = -1", "cls_token_id' = -1",
        "mask_token_id' = 100000", "unknown_token_id' = -1", "eot_token_id' = -1",
        "eom_token_id' = -1", "fim_pre_token_id' = 512", "fim_pad_token_id' = 1099511627776",
        "bos_token_id' = 70000"}) {
    EXPECT_EQ(log.Count(key), 1) << key;
  }
  EXPECT_EQ(log.Count("treated as absent"), 10);
  auto t = Tokenizer::Create(std::move(*v));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->Encode("Hello", true, false).front(), 1);
}

TEST(RealMetadata, AnIdThatIsNotAnIntegerIsAnErrorNamingTheKey) {
  GgufWriter w = VocabFile(true, true);
  w.AddString("tokenizer.ggml.padding_token_id", "none");
  Parsed p = Parse(w);
  ASSERT_NE(p.file, nullptr);
  auto v = LoadVocab(*p.file);
  ASSERT_FALSE(v.ok());
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("real.gguf"));
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("tokenizer.ggml.padding_token_id"));
}

TEST(RealMetadata, MissingScoresAndTypesGetLlamaCppDefaults) {
  Parsed p = Parse(VocabFile(/*scores=*/false, /*types=*/false));
  ASSERT_NE(p.file, nullptr);
  auto t = Tokenizer::FromGguf(*p.file);
  ASSERT_TRUE(t.ok()) << t.status();
  const Vocab& v = (*t)->vocab();
  ASSERT_EQ(v.scores.size(), 0u);  // empty means every score is 0
  ASSERT_EQ(v.token_type.size(), static_cast<size_t>(kDemoVocabSize));
  for (int32_t type : v.token_type) ASSERT_EQ(type, static_cast<int32_t>(TokenType::kNormal));
  // With every score 0 and every token normal, "<s>" is plain text, never BOS.
  const std::vector<int32_t> ids = (*t)->Encode("<s>", false, /*parse_special=*/true);
  EXPECT_FALSE(ids.empty());
  for (int32_t id : ids) EXPECT_NE(id, 1);
}

TEST(RealMetadata, UnnamedSpecialTokensAreFoundByTheirText) {
  // ids 512.. in this order.
  const std::vector<std::string> extra = {"<|im_end|>",    "<|eom_id|>",   "<|fim_prefix|>",
                                          "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>",
                                          "<|repo_name|>", "<|file_sep|>"};
  Parsed p = Parse(VocabFile(true, true, extra));
  ASSERT_NE(p.file, nullptr);
  auto t = Tokenizer::FromGguf(*p.file);
  ASSERT_TRUE(t.ok()) << t.status();
  const Vocab& v = (*t)->vocab();
  EXPECT_EQ(v.eot, 512);
  EXPECT_EQ(v.eom, 513);
  EXPECT_EQ(v.fim_pre, 514);
  EXPECT_EQ(v.fim_suf, 515);
  EXPECT_EQ(v.fim_mid, 516);
  EXPECT_EQ(v.fim_pad, 517);
  EXPECT_EQ(v.fim_rep, 518);
  EXPECT_EQ(v.fim_sep, 519);
  // Found by text means control: parsed as special, streamed as nothing.
  for (int32_t id = 512; id < 520; ++id) EXPECT_TRUE((*t)->IsControl(id)) << id;
  EXPECT_THAT((*t)->Encode("<|fim_prefix|>", false, true), ElementsAre(514));
  // End of generation as llama.cpp has it: EOS, EOT, EOM and the FIM pad,
  // repository and file-separator tokens; not the FIM prefix/suffix/middle.
  EXPECT_THAT((*t)->EogIds(), ElementsAre(2, 512, 513, 517, 518, 519));
}

TEST(RealMetadata, NamedIdsWinOverTextAndEveryEndIdStops) {
  GgufWriter w = VocabFile(true, true, {"<|im_end|>", "<|end_of_text|>", "<|eom_id|>"});
  // EOS given as a token that only names itself EOT-like elsewhere; EOT and
  // EOM named by keys.
  w.AddUint32("tokenizer.ggml.eos_token_id", 513);
  w.AddUint32("tokenizer.ggml.eot_token_id", 10);
  w.AddUint32("tokenizer.ggml.eom_token_id", 11);
  Parsed p = Parse(w);
  ASSERT_NE(p.file, nullptr);
  auto t = Tokenizer::FromGguf(*p.file);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->vocab().eot, 10);
  EXPECT_EQ((*t)->vocab().eom, 11);
  // "<|im_end|>" (512) stays end of generation by its text, as in llama.cpp,
  // and "<|eom_id|>" (514) too; 2, the default EOS, no longer is.
  EXPECT_THAT((*t)->EogIds(), ElementsAre(10, 11, 512, 513, 514));
}

TEST(RealMetadata, EotAloneEndsGeneration) {
  // A vocabulary with no EOS at all, only an EOT.
  Vocab v = MakeDemoVocab();
  v.eos = -1;
  v.eot = 7;
  auto t = Tokenizer::Create(std::move(v));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT((*t)->EogIds(), ElementsAre(7));
}

TEST(RealMetadata, AddEosTokenIsHonoured) {
  GgufWriter w = VocabFile(true, true);
  w.AddBool("tokenizer.ggml.add_eos_token", true);
  Parsed p = Parse(w);
  ASSERT_NE(p.file, nullptr);
  auto t = Tokenizer::FromGguf(*p.file);
  ASSERT_TRUE(t.ok()) << t.status();
  const std::vector<int32_t> ids = (*t)->Encode("Hello world", /*add_special=*/true, false);
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(ids.back(), 2);
  EXPECT_NE((*t)->Encode("Hello world", /*add_special=*/false, false).back(), 2);
}

// A small random model (weights included) with extra metadata keys.
struct ModelFile {
  std::unique_ptr<GgufFile> file;
};

ModelFile DemoModelWith(const std::function<void(GgufWriter&)>& extra) {
  static int counter = 0;
  RandomModelSpec spec;
  spec.n_embd = 64;
  spec.n_layer = 1;
  spec.n_head = 4;
  spec.n_head_kv = 2;
  spec.n_ff = 128;
  spec.n_ctx = 64;
  spec.threads = 1;
  spec.extra_metadata = extra;
  const std::string path =
      ::m40llm::testing::TempDir() + "/real" + std::to_string(++counter) + ".gguf";
  ModelFile m;
  const absl::Status w = WriteRandomLlama(spec, path);
  EXPECT_TRUE(w.ok()) << w;
  if (!w.ok()) return m;
  auto f = GgufFile::Open(path);
  EXPECT_TRUE(f.ok()) << f.status();
  if (f.ok()) m.file = std::move(*f);
  return m;
}

TEST(RealMetadata, GeneralAndUnknownKeysAreIgnored) {
  ModelFile p = DemoModelWith([](GgufWriter& w) {
    w.AddString("general.license", "apache-2.0");
    w.AddStringArray("general.tags", {"text-generation", "llama"});
    w.AddUint32("general.quantization_version", 2);
    w.AddString("general.source.url", "https://example.invalid/model");
    w.AddUint32("llama.vocab_size", 512);
    w.AddBool("llama.rope.scaling.finetuned", false);
    w.AddString("tokenizer.chat_template", "{% for m in messages %}{{ m.content }}{% endfor %}");
    std::string doubles(16, '\0');
    const double two[2] = {1.0, 2.0};
    std::memcpy(doubles.data(), two, sizeof(two));
    w.AddRawArray("some.vendor.calibration", GgufValueType::kFloat64, 2, doubles);
    w.AddInt32("some.vendor.flag", -7);
  });
  ASSERT_NE(p.file, nullptr);
  auto c = ReadModelConfig(*p.file);
  ASSERT_TRUE(c.ok()) << c.status();
  auto m = LlamaModel::Load(*p.file);
  ASSERT_TRUE(m.ok()) << m.status();
  auto t = Tokenizer::FromGguf(*p.file);
  ASSERT_TRUE(t.ok()) << t.status();
}

// rope_freq_scale for a model with these RoPE scaling keys, or the error.
absl::StatusOr<float> RopeScale(const std::function<void(GgufWriter&)>& keys) {
  ModelFile p = DemoModelWith(keys);
  if (p.file == nullptr) return absl::InternalError("no file");
  auto c = ReadModelConfig(*p.file);
  if (!c.ok()) return c.status();
  return c->rope_freq_scale;
}

TEST(RealMetadata, RopeScalingKeysAsLlamaCppReadsThem) {
  EXPECT_EQ(*RopeScale([](GgufWriter&) {}), 1.0f);
  EXPECT_EQ(*RopeScale([](GgufWriter& w) {
    w.AddString("llama.rope.scaling.type", "linear");
    w.AddFloat32("llama.rope.scaling.factor", 4.0f);
  }),
            0.25f);
  // No type: linear, with the factor from either key.
  EXPECT_EQ(*RopeScale([](GgufWriter& w) { w.AddFloat32("llama.rope.scaling.factor", 2.0f); }),
            0.5f);
  EXPECT_EQ(*RopeScale([](GgufWriter& w) { w.AddFloat32("llama.rope.scale_linear", 8.0f); }),
            0.125f);
  // "none" never scales; a factor of 0 means none.
  EXPECT_EQ(*RopeScale([](GgufWriter& w) {
    w.AddString("llama.rope.scaling.type", "none");
    w.AddFloat32("llama.rope.scaling.factor", 4.0f);
  }),
            1.0f);
  EXPECT_EQ(*RopeScale([](GgufWriter& w) { w.AddFloat32("llama.rope.scaling.factor", 0.0f); }),
            1.0f);
}

TEST(RealMetadata, YarnAndLongRopeAreRefusedByName) {
  for (const auto& [type, name] : std::vector<std::pair<std::string, std::string>>{
           {"yarn", "YaRN"}, {"longrope", "LongRoPE"}}) {
    auto s = RopeScale([&](GgufWriter& w) {
      w.AddString("llama.rope.scaling.type", type);
      w.AddFloat32("llama.rope.scaling.factor", 4.0f);
    });
    ASSERT_FALSE(s.ok()) << type;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kUnimplemented);
    EXPECT_THAT(std::string(s.status().message()), HasSubstr(name));
    EXPECT_THAT(std::string(s.status().message()), HasSubstr("not supported"));
  }
  auto unknown = RopeScale([](GgufWriter& w) { w.AddString("llama.rope.scaling.type", "warp"); });
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("'warp'"));
  auto negative =
      RopeScale([](GgufWriter& w) { w.AddFloat32("llama.rope.scaling.factor", -2.0f); });
  ASSERT_FALSE(negative.ok());
  EXPECT_THAT(std::string(negative.status().message()), HasSubstr("factor"));
}

TEST(RealMetadata, MissingMandatoryKeysAreStillNamed) {
  // The demo model without its vocabulary's token list: nothing to guess.
  GgufWriter w;
  w.AddString("tokenizer.ggml.model", "llama");
  Parsed p = Parse(w);
  ASSERT_NE(p.file, nullptr);
  auto v = LoadVocab(*p.file);
  ASSERT_FALSE(v.ok());
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("tokenizer.ggml.tokens"));
}

}  // namespace
}  // namespace m40llm
