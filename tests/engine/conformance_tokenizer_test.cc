// Tokenizer conformance against llama.cpp's own test vectors: for each
// vocabulary-only GGUF under <fixtures>/vocab, every string of `<name>.inp`
// must encode (no BOS/EOS, special tokens not parsed, as llama.cpp's
// test-tokenizer-0 does) to exactly the ids on the matching `<name>.out`
// line, and decode back to the string wherever llama.cpp's detokenizer
// would give it back. Also: the prompts of the reference runs must encode
// (BOS added, special tokens parsed) to llama.cpp's prompt_tokens with the
// vocabulary embedded in the tiny model files.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_support.h"

namespace m40llm {
namespace {

struct Case {
  std::string text;
  std::vector<int32_t> ids;
};

// .inp: strings, each followed by "\n__ggml_vocab_test__\n" (so a string may
// itself be empty or contain newlines). .out: one line of space-separated
// ids per string.
std::vector<Case> ReadCases(const std::string& inp_path, const std::string& out_path) {
  const std::string inp = testing::ReadFileOrFail(inp_path);
  const std::string out = testing::ReadFileOrFail(out_path);
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  for (size_t pos = 0; pos < inp.size();) {
    const size_t next = inp.find(sep, pos);
    if (next == std::string::npos) {
      texts.push_back(inp.substr(pos));
      break;
    }
    texts.push_back(inp.substr(pos, next - pos));
    pos = next + sep.size();
  }
  std::vector<std::vector<int32_t>> ids;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream nums(line);
    std::vector<int32_t> row;
    for (int32_t id; nums >> id;) row.push_back(id);
    ids.push_back(std::move(row));
  }
  EXPECT_EQ(texts.size(), ids.size())
      << inp_path << " and " << out_path << " hold different numbers of cases";
  std::vector<Case> cases;
  for (size_t i = 0; i < texts.size() && i < ids.size(); ++i) {
    cases.push_back({texts[i], ids[i]});
  }
  return cases;
}

std::string Ids(const std::vector<int32_t>& v) {
  std::string s;
  for (int32_t id : v) s.append(" ").append(std::to_string(id));
  return s;
}

// Whether llama.cpp's BPE space clean-up would alter `s` (then Decode cannot
// give `s` back and the round trip is not checked).
bool CleanUpAlters(const std::string& s) {
  for (const char* pat : {" ?", " !", " .", " ,", " ' ", " 's", " 'm", " 're", " 've"}) {
    if (s.find(pat) != std::string::npos) return true;
  }
  return false;
}

struct Tally {
  int encoded_ok = 0;
  int decoded_ok = 0;
  int decode_checked = 0;
};

Tally RunVocab(const std::string& dir, const std::string& name, size_t expected_cases) {
  Tally tally;
  const std::string path = dir + "/vocab/" + name;
  auto file = GgufFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return tally;
  auto tok = Tokenizer::FromGguf(**file);
  EXPECT_TRUE(tok.ok()) << tok.status();
  if (!tok.ok()) return tally;

  const std::vector<Case> cases = ReadCases(path + ".inp", path + ".out");
  EXPECT_EQ(cases.size(), expected_cases);
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const std::vector<int32_t> got =
        (*tok)->Encode(c.text, /*add_special=*/false, /*parse_special=*/false);
    EXPECT_EQ(got, c.ids) << name << " case " << i << " text '" << c.text
                          << "'\n  want:" << Ids(c.ids) << "\n  got: " << Ids(got);
    tally.encoded_ok += got == c.ids;

    const bool checkable = (*tok)->is_spm() || !CleanUpAlters(c.text);
    if (checkable) {
      ++tally.decode_checked;
      const std::string back = (*tok)->Decode(got);
      EXPECT_EQ(back, c.text) << name << " case " << i << " does not round-trip";
      tally.decoded_ok += back == c.text;
    }
  }
  std::printf("[ conformance ] %s: %d/%zu encodings match llama.cpp, %d/%d round-trip\n",
              name.c_str(), tally.encoded_ok, cases.size(), tally.decoded_ok, tally.decode_checked);
  return tally;
}

TEST(ConformanceTokenizerTest, LlamaSpmMatchesLlamaCpp) {
  M40_REQUIRE_FIXTURES(dir);
  const Tally t = RunVocab(dir, "ggml-vocab-llama-spm.gguf", 46);
  EXPECT_EQ(t.encoded_ok, 46);
  // No normalisation and byte fallback: every string comes back.
  EXPECT_EQ(t.decode_checked, 46);
  EXPECT_EQ(t.decoded_ok, 46);
}

TEST(ConformanceTokenizerTest, Gpt2BpeMatchesLlamaCpp) {
  M40_REQUIRE_FIXTURES(dir);
  const Tally t = RunVocab(dir, "ggml-vocab-gpt-2.gguf", 46);
  EXPECT_EQ(t.encoded_ok, 46);
  EXPECT_EQ(t.decoded_ok, t.decode_checked);
  EXPECT_GT(t.decode_checked, 40);
}

TEST(ConformanceTokenizerTest, VocabularyMetadata) {
  M40_REQUIRE_FIXTURES(dir);
  auto spm_file = GgufFile::Open(dir + "/vocab/ggml-vocab-llama-spm.gguf");
  ASSERT_TRUE(spm_file.ok()) << spm_file.status();
  auto spm = LoadVocab(**spm_file);
  ASSERT_TRUE(spm.ok()) << spm.status();
  EXPECT_EQ(spm->model, "llama");
  EXPECT_EQ(spm->tokens.size(), 32000u);
  EXPECT_EQ(spm->bos, 1);
  EXPECT_EQ(spm->eos, 2);
  EXPECT_EQ(spm->unk, 0);
  EXPECT_TRUE(spm->add_bos);
  EXPECT_FALSE(spm->add_eos);
  EXPECT_TRUE(spm->add_space_prefix);

  auto bpe_file = GgufFile::Open(dir + "/vocab/ggml-vocab-gpt-2.gguf");
  ASSERT_TRUE(bpe_file.ok()) << bpe_file.status();
  auto bpe = Tokenizer::FromGguf(**bpe_file);
  ASSERT_TRUE(bpe.ok()) << bpe.status();
  const Vocab& v = (*bpe)->vocab();
  EXPECT_EQ(v.model, "gpt2");
  EXPECT_EQ(v.pre, "gpt-2");
  EXPECT_EQ(v.tokens.size(), 50257u);
  EXPECT_EQ(v.merges.size(), 50000u);
  EXPECT_EQ(v.eos, 50256);
  EXPECT_EQ(v.eot, 50256);  // found by its text, <|endoftext|>
  EXPECT_FALSE(v.add_bos);
  EXPECT_FALSE(v.add_space_prefix);
  EXPECT_TRUE((*bpe)->IsEog(50256));
  // <|endoftext|> is recognised only when special tokens are parsed.
  EXPECT_EQ((*bpe)->Encode("<|endoftext|>", false, true), std::vector<int32_t>{50256});
  EXPECT_GT((*bpe)->Encode("<|endoftext|>", false, false).size(), 1u);
}

TEST(ConformanceTokenizerTest, ReferencePromptsMatchLlamaCpp) {
  M40_REQUIRE_FIXTURES(dir);
  auto file = GgufFile::Open(dir + "/models/tiny-llama-f16.gguf");
  ASSERT_TRUE(file.ok()) << file.status();
  auto tok = Tokenizer::FromGguf(**file);
  ASSERT_TRUE(tok.ok()) << tok.status();
  int checked = 0;
  int matched = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir + "/reference")) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("tiny-llama-f16.p", 0) != 0 || entry.path().extension() != ".json") {
      continue;
    }
    const auto j = nlohmann::json::parse(testing::ReadFileOrFail(entry.path().string()));
    const std::string prompt = j.at("prompt").get<std::string>();
    const auto want = j.at("prompt_tokens").get<std::vector<int32_t>>();
    const bool add_bos = j.at("add_bos").get<bool>();
    const std::vector<int32_t> got =
        (*tok)->Encode(prompt, /*add_special=*/add_bos, /*parse_special=*/true);
    EXPECT_EQ(got, want) << name << ": '" << prompt << "'\n  want:" << Ids(want)
                         << "\n  got: " << Ids(got);
    ++checked;
    matched += got == want;
    EXPECT_EQ((*tok)->Decode(got), prompt) << name;
  }
  std::printf("[ conformance ] reference prompts: %d/%d match llama.cpp\n", matched, checked);
  EXPECT_GT(checked, 0);
}

}  // namespace
}  // namespace m40llm
