// Random-weight model writer (`m40llm mkmodel`): the same bytes whatever the
// thread count, the same bytes as the in-memory writer it replaced, padded
// vocabularies that load and tokenize like the demo one, and the presets.
#include "engine/demo_model.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/demo_vocab.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/test_support.h"

namespace m40llm {
namespace {

using ::testing::HasSubstr;

// 64-bit FNV-1a, to pin file contents without storing them.
uint64_t Fnv1a(const std::string& bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : bytes) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

std::string WriteAndRead(const RandomModelSpec& spec, const std::string& name) {
  const std::string path = testing::TempDir() + "/" + name;
  const absl::Status s = WriteRandomLlama(spec, path);
  EXPECT_TRUE(s.ok()) << s;
  return s.ok() ? testing::ReadFileOrFail(path) : std::string();
}

// Big enough that the embedding and output matrices (4096 x 512 = 2 Mi
// elements) span several generation blocks, so threads share a tensor.
RandomModelSpec MultiBlockSpec(GgmlType type) {
  RandomModelSpec s;
  s.n_embd = 512;
  s.n_layer = 1;
  s.n_head = 8;
  s.n_head_kv = 2;
  s.n_ff = 768;
  s.n_vocab = 4096;
  s.weight_type = type;
  s.seed = 7;
  return s;
}

class ThreadCountTest : public ::testing::TestWithParam<GgmlType> {};

TEST_P(ThreadCountTest, SameBytesForOneTwoAndThreeThreads) {
  RandomModelSpec spec = MultiBlockSpec(GetParam());
  spec.threads = 1;
  const std::string one = WriteAndRead(spec, "t1.gguf");
  ASSERT_FALSE(one.empty());
  for (int threads : {2, 3}) {
    spec.threads = threads;
    const std::string many = WriteAndRead(spec, "t" + std::to_string(threads) + ".gguf");
    EXPECT_EQ(many.size(), one.size()) << threads << " threads";
    EXPECT_TRUE(many == one) << threads << " threads give different bytes";
  }
  // A different seed changes the weights (the comparison can fail).
  spec.seed = 8;
  EXPECT_NE(WriteAndRead(spec, "seed8.gguf"), one);
}

INSTANTIATE_TEST_SUITE_P(Types, ThreadCountTest,
                         ::testing::Values(GgmlType::kF16, GgmlType::kQ8_0, GgmlType::kQ4_K),
                         [](const auto& info) { return std::string(TypeName(info.param)); });

// Hashes of files written by the in-memory writer that streaming replaced.
// The default spec is the cached demo model: if its hash has to change, bump
// the version tag in EnsureDemoModel() too.
TEST(DemoModel, StreamedFilesEqualTheInMemoryWritersOutput) {
  RandomModelSpec small;
  small.n_embd = 64;
  small.n_layer = 2;
  small.n_head = 4;
  small.n_head_kv = 2;
  small.n_ff = 128;
  small.seed = 3;
  EXPECT_EQ(Fnv1a(WriteAndRead(small, "small.gguf")), 0x14299735fa76231bull);
  EXPECT_EQ(Fnv1a(WriteAndRead(RandomModelSpec(), "default.gguf")), 0xb0fa76634d84ebf1ull);
  RandomModelSpec q4k;
  q4k.weight_type = GgmlType::kQ4_K;
  q4k.n_layer = 2;
  q4k.n_ff = 512;
  q4k.rope_freqs = true;
  q4k.tied_output = true;
  EXPECT_EQ(Fnv1a(WriteAndRead(q4k, "q4k.gguf")), 0x719fdf25620e1370ull);
}

TEST(DemoModel, PaddedVocabularyLoadsAndTokenizesLikeTheDemoOne) {
  RandomModelSpec spec;
  spec.n_embd = 64;
  spec.n_layer = 1;
  spec.n_head = 4;
  spec.n_head_kv = 2;
  spec.n_ff = 128;
  spec.threads = 2;
  const std::string dir = testing::TempDir();
  ASSERT_TRUE(WriteRandomLlama(spec, dir + "/demo.gguf").ok());
  spec.n_vocab = 1000;
  ASSERT_TRUE(WriteRandomLlama(spec, dir + "/padded.gguf").ok());

  auto demo_file = GgufFile::Open(dir + "/demo.gguf");
  auto file = GgufFile::Open(dir + "/padded.gguf");
  ASSERT_TRUE(demo_file.ok() && file.ok());
  auto demo_tok = Tokenizer::FromGguf(**demo_file);
  auto tok = Tokenizer::FromGguf(**file);
  ASSERT_TRUE(demo_tok.ok()) << demo_tok.status();
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*demo_tok)->n_vocab(), kDemoVocabSize);
  EXPECT_EQ((*tok)->n_vocab(), 1000);
  EXPECT_EQ((*tok)->TokenText(kDemoVocabSize), "<extra_512>");
  EXPECT_EQ((*tok)->TokenText(999), "<extra_999>");
  EXPECT_EQ((*tok)->TokenId("<extra_700>"), 700);
  for (const char* text : {"Hello world, the model said: <extra_5> and <s>", "ünïcödé 123"}) {
    const auto ids = (*tok)->Encode(text, /*add_special=*/true, /*parse_special=*/false);
    EXPECT_EQ(ids, (*demo_tok)->Encode(text, true, false)) << text;
    for (int32_t id : ids) EXPECT_LT(id, kDemoVocabSize) << text;
    EXPECT_EQ((*tok)->Decode(ids), text);
  }

  auto model = LlamaModel::Load(**file, nullptr, 2);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->config().n_vocab, 1000);
  EXPECT_EQ((*model)->token_embd.rows, 1000);
  EXPECT_EQ((*model)->output.rows, 1000);
}

TEST(DemoModel, VocabularySmallerThanTheDemoOneIsRefused) {
  RandomModelSpec spec;
  spec.n_vocab = kDemoVocabSize - 1;
  const absl::Status s = WriteRandomLlama(spec, testing::TempDir() + "/x.gguf");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("n_vocab (511)"));
}

TEST(DemoModel, PresetsHaveTheRealShapes) {
  EXPECT_THAT(RandomModelPresetNames(), ::testing::ElementsAre("tinyllama-1.1b", "llama2-7b"));
  for (const std::string& name : RandomModelPresetNames()) {
    EXPECT_TRUE(RandomModelPreset(name).ok()) << name;
  }
  auto tiny = RandomModelPreset("tinyllama-1.1b");
  ASSERT_TRUE(tiny.ok());
  EXPECT_EQ(tiny->n_embd, 2048);
  EXPECT_EQ(tiny->n_layer, 22);
  EXPECT_EQ(tiny->n_head, 32);
  EXPECT_EQ(tiny->n_head_kv, 4);
  EXPECT_EQ(tiny->n_ff, 5632);
  EXPECT_EQ(tiny->n_vocab, 32000);
  EXPECT_EQ(tiny->n_ctx, 2048);
  EXPECT_EQ(tiny->weight_type, GgmlType::kF16);
  auto l7 = RandomModelPreset("llama2-7b");
  ASSERT_TRUE(l7.ok());
  EXPECT_EQ(l7->n_embd, 4096);
  EXPECT_EQ(l7->n_layer, 32);
  EXPECT_EQ(l7->n_head, 32);
  EXPECT_EQ(l7->n_head_kv, 32);
  EXPECT_EQ(l7->n_ff, 11008);
  EXPECT_EQ(l7->n_vocab, 32000);
  EXPECT_EQ(l7->n_ctx, 4096);
  for (const auto* p : {&*tiny, &*l7}) {
    EXPECT_FLOAT_EQ(p->rope_freq_base, 10000.0f);
    EXPECT_FLOAT_EQ(p->rms_eps, 1e-5f);
  }
  const auto bad = RandomModelPreset("llama-70b");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("unknown preset 'llama-70b' (known: tinyllama-1.1b, llama2-7b)"));
}

// A preset with its layers and width cut down (keeping the head layout and
// the 32000-token vocabulary) writes a file that loads with that shape.
TEST(DemoModel, ScaledDownPresetLoads) {
  auto spec = RandomModelPreset("tinyllama-1.1b");
  ASSERT_TRUE(spec.ok());
  spec->n_embd = 256;
  spec->n_ff = 512;
  spec->n_layer = 1;
  spec->weight_type = GgmlType::kQ8_0;
  const std::string path = testing::TempDir() + "/tiny.gguf";
  ASSERT_TRUE(WriteRandomLlama(*spec, path).ok());
  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto model = LlamaModel::Load(**file, nullptr, 2);
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& c = (*model)->config();
  EXPECT_EQ(c.n_vocab, 32000);
  EXPECT_EQ(c.n_head, 32);
  EXPECT_EQ(c.n_head_kv, 4);
  EXPECT_EQ(c.n_ctx_train, 2048);
}

}  // namespace
}  // namespace m40llm
