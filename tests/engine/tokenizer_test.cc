// Unit tests for the tokenizers, the incremental detokenizer, the Unicode
// helpers and the demo vocabulary. Needs no fixtures: vocabularies are built
// in the test (and one small GGUF is assembled byte by byte).
#include "engine/tokenizer.h"

#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "engine/demo_vocab.h"
#include "engine/gguf.h"
#include "engine/unicode.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace m40llm {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kLlamaEmoji[] = "\xF0\x9F\xA6\x99";  // U+1F999
constexpr char kReplacement[] = "\xEF\xBF\xBD";     // U+FFFD
const std::string kMarker = "\xE2\x96\x81";         // U+2581

std::unique_ptr<Tokenizer> MustCreate(Vocab v) {
  auto t = Tokenizer::Create(std::move(v));
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

const Tokenizer& Demo() {
  static const std::unique_ptr<Tokenizer> t = MustCreate(MakeDemoVocab());
  return *t;
}

int32_t Id(const Tokenizer& t, const std::string& text) {
  const int32_t id = t.TokenId(text);
  EXPECT_GE(id, 0) << "no token '" << text << "'";
  return id;
}

int32_t ByteId(const Tokenizer& t, uint8_t b) { return Id(t, absl::StrFormat("<0x%02X>", b)); }

// ---------------------------------------------------------------------------
// Demo vocabulary.

TEST(DemoVocabTest, LayoutAndDeterminism) {
  const Vocab v = MakeDemoVocab();
  ASSERT_EQ(v.tokens.size(), static_cast<size_t>(kDemoVocabSize));
  EXPECT_EQ(v.scores.size(), v.tokens.size());
  EXPECT_EQ(v.token_type.size(), v.tokens.size());
  EXPECT_EQ(v.model, "llama");
  EXPECT_EQ(v.tokens[0], "<unk>");
  EXPECT_EQ(v.tokens[1], "<s>");
  EXPECT_EQ(v.tokens[2], "</s>");
  EXPECT_EQ(v.unk, 0);
  EXPECT_EQ(v.bos, 1);
  EXPECT_EQ(v.eos, 2);
  EXPECT_EQ(v.token_type[0], static_cast<int32_t>(TokenType::kUnknown));
  EXPECT_EQ(v.token_type[1], static_cast<int32_t>(TokenType::kControl));
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(v.tokens[3 + b], absl::StrFormat("<0x%02X>", b));
    EXPECT_EQ(v.token_type[3 + b], static_cast<int32_t>(TokenType::kByte));
  }
  EXPECT_TRUE(v.add_bos);
  EXPECT_FALSE(v.add_eos);
  const Vocab again = MakeDemoVocab();
  EXPECT_EQ(again.tokens, v.tokens);
  EXPECT_EQ(again.scores, v.scores);
}

TEST(DemoVocabTest, EnglishUsesWordPieces) {
  const Tokenizer& t = Demo();
  EXPECT_THAT(t.Encode("Hello world", false, false),
              ElementsAre(Id(t, kMarker + "Hello"), Id(t, kMarker + "world")));
  EXPECT_THAT(t.Encode("the model", true, false),
              ElementsAre(1, Id(t, kMarker + "the"), Id(t, kMarker + "model")));
  // Short text stays short: no byte fallback for plain ASCII.
  const auto ids = t.Encode("This is a test of the text model.", false, false);
  EXPECT_LT(ids.size(), 14u);
  for (int32_t id : ids) EXPECT_FALSE(id >= 3 && id < 259) << "byte token " << id;
}

TEST(DemoVocabTest, EmojiFallsBackToBytes) {
  const Tokenizer& t = Demo();
  EXPECT_THAT(t.Encode(kLlamaEmoji, false, false),
              ElementsAre(Id(t, kMarker), ByteId(t, 0xF0), ByteId(t, 0x9F), ByteId(t, 0xA6),
                          ByteId(t, 0x99)));
}

TEST(DemoVocabTest, RoundTripsArbitraryBytes) {
  const Tokenizer& t = Demo();
  const std::vector<std::string> texts = {
      "",
      " ",
      "  leading and trailing  ",
      "Hello, world! The quick brown fox.",
      std::string("llama ") + kLlamaEmoji + " and rocket \xF0\x9F\x9A\x80",
      "\xE4\xBD\xA0\xE5\xA5\xBD \xD0\xBF\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82",
      "tabs\tand\nnewlines\r\n",
      "invalid \xFF\xFE, overlong \xC0\x80, cut \xE2\x82, lone \x80",
      std::string("nul\0inside", 10),
      "<s> looks special but is text </s>",
  };
  for (const std::string& s : texts) {
    EXPECT_EQ(t.Decode(t.Encode(s, false, false)), s) << "'" << s << "'";
    const auto with_bos = t.Encode(s, true, false);
    ASSERT_FALSE(with_bos.empty());
    EXPECT_EQ(with_bos[0], 1);
    EXPECT_EQ(t.Decode(with_bos), s) << "'" << s << "' with BOS";
  }
  // Random bytes, fixed seed.
  std::mt19937 rng(1234);
  for (int i = 0; i < 200; ++i) {
    std::string s(rng() % 24, '\0');
    for (char& c : s) c = static_cast<char>(rng() & 0xFF);
    EXPECT_EQ(t.Decode(t.Encode(s, true, false)), s);
  }
}

TEST(DemoVocabTest, EmptyInput) {
  const Tokenizer& t = Demo();
  EXPECT_TRUE(t.Encode("", false, false).empty());
  EXPECT_THAT(t.Encode("", true, false), ElementsAre(1));
}

// ---------------------------------------------------------------------------
// SentencePiece details on a hand-built vocabulary.

// <unk> <s> </s>, byte tokens, then `pieces` (normal) with `scores`.
Vocab SpmVocab(const std::vector<std::string>& pieces, const std::vector<float>& scores) {
  Vocab v;
  v.model = "llama";
  v.unk = 0;
  v.bos = 1;
  v.eos = 2;
  v.add_bos = true;
  v.tokens = {"<unk>", "<s>", "</s>"};
  v.token_type = {2, 3, 3};
  v.scores = {0, 0, 0};
  for (int b = 0; b < 256; ++b) {
    v.tokens.push_back(absl::StrFormat("<0x%02X>", b));
    v.token_type.push_back(6);
    v.scores.push_back(0);
  }
  for (size_t i = 0; i < pieces.size(); ++i) {
    v.tokens.push_back(pieces[i]);
    v.token_type.push_back(1);
    v.scores.push_back(scores[i]);
  }
  return v;
}

TEST(SpmTest, HighestScoreMergesFirst) {
  const std::string m = kMarker;
  auto a = MustCreate(SpmVocab({m, "a", "b", "c", "ab", "bc"}, {0, 0, 0, 0, -1, -0.5f}));
  EXPECT_THAT(a->Encode("abc", false, false),
              ElementsAre(a->TokenId(m), a->TokenId("a"), a->TokenId("bc")));
  auto b = MustCreate(SpmVocab({m, "a", "b", "c", "ab", "bc"}, {0, 0, 0, 0, -0.5f, -1}));
  EXPECT_THAT(b->Encode("abc", false, false),
              ElementsAre(b->TokenId(m), b->TokenId("ab"), b->TokenId("c")));
}

TEST(SpmTest, TiesMergeLeftmostAndChainsContinue) {
  const std::string m = kMarker;
  auto t = MustCreate(SpmVocab({m, "a", "aa", m + "a", m + "aa"}, {0, 0, -1, -2, -3}));
  // "▁aaa": "aa" (score -1) wins over "▁a" (-2); of the two "aa" pairs the
  // leftmost merges: ▁ [aa] a. Then "▁aa" exists (-3): [▁aa] a.
  EXPECT_THAT(t->Encode("aaa", false, false), ElementsAre(t->TokenId(m + "aa"), t->TokenId("a")));
}

TEST(SpmTest, SpacesAndByteFallback) {
  const std::string m = kMarker;
  auto t = MustCreate(SpmVocab({m, "a", m + "a"}, {0, 0, -1}));
  // Spaces become U+2581; the prefix space is added once at the start.
  EXPECT_THAT(t->Encode("a a", false, false),
              ElementsAre(t->TokenId(m + "a"), t->TokenId(m + "a")));
  // 'z' is no piece: byte token.
  EXPECT_THAT(t->Encode("az", false, false),
              ElementsAre(t->TokenId(m + "a"), t->TokenId("<0x7A>")));
  Vocab no_prefix = SpmVocab({m, "a", m + "a"}, {0, 0, -1});
  no_prefix.add_space_prefix = false;
  auto u = MustCreate(no_prefix);
  EXPECT_THAT(u->Encode("a", false, false), ElementsAre(u->TokenId("a")));
  EXPECT_EQ(u->Decode(u->Encode(" a", false, false)), " a");
}

TEST(SpmTest, TokenBytes) {
  const Tokenizer& t = Demo();
  EXPECT_EQ(t.TokenBytes(Id(t, kMarker + "Hello")), " Hello");
  EXPECT_EQ(t.TokenBytes(ByteId(t, 0x41)), "A");
  EXPECT_EQ(t.TokenBytes(ByteId(t, 0x00)), std::string(1, '\0'));
  EXPECT_EQ(t.TokenBytes(1), "");  // control
  EXPECT_EQ(t.TokenBytes(0), "");  // unknown
  EXPECT_EQ(t.TokenBytes(-1), "");
  EXPECT_EQ(t.TokenBytes(t.n_vocab()), "");
  EXPECT_EQ(t.TokenText(1), "<s>");
  EXPECT_EQ(t.TokenText(t.n_vocab()), "");
  EXPECT_TRUE(t.IsControl(1));
  EXPECT_FALSE(t.IsControl(ByteId(t, 0x41)));
  EXPECT_TRUE(t.IsEog(2));
  EXPECT_FALSE(t.IsEog(1));
}

TEST(SpmTest, DecodeDropsOnlyThePrefixSpace) {
  const Tokenizer& t = Demo();
  const int32_t hello = Id(t, kMarker + "Hello");
  const int32_t world = Id(t, kMarker + "world");
  EXPECT_EQ(t.Decode(std::vector<int32_t>{hello, world}), "Hello world");
  EXPECT_EQ(t.Decode(std::vector<int32_t>{1, hello, world, 2}), "Hello world");
  EXPECT_EQ(t.Decode(std::vector<int32_t>{world}), "world");
  // A text that really starts with a space keeps it (two U+2581 encoded).
  EXPECT_EQ(t.Decode(t.Encode(" world", true, false)), " world");
}

// ---------------------------------------------------------------------------
// Special tokens.

TEST(SpecialTokenTest, ParseSpecialOnAndOff) {
  const Tokenizer& t = Demo();
  const int32_t hello = Id(t, kMarker + "Hello");
  // Parsed: the text after a special token gets the prefix space again.
  EXPECT_THAT(t.Encode("<s>Hello</s>", false, true), ElementsAre(1, hello, 2));
  EXPECT_THAT(t.Encode("Hello<s>Hello", false, true), ElementsAre(hello, 1, hello));
  const auto plain = t.Encode("<s>Hello</s>", false, false);
  EXPECT_THAT(plain, ::testing::Not(::testing::Contains(1)));
  EXPECT_THAT(plain, ::testing::Not(::testing::Contains(2)));
  EXPECT_EQ(t.Decode(plain), "<s>Hello</s>");
  // <unk> is special too.
  EXPECT_THAT(t.Encode("<unk>", false, true), ElementsAre(0));
}

TEST(SpecialTokenTest, UserDefinedAlwaysAndLongestFirst) {
  const std::string m = kMarker;
  Vocab v = SpmVocab({m, "a", "b"}, {0, 0, 0});
  v.tokens.push_back("<tool>");  // user-defined
  v.token_type.push_back(4);
  v.scores.push_back(0);
  v.tokens.push_back("<|x|>");  // control
  v.token_type.push_back(3);
  v.scores.push_back(0);
  v.tokens.push_back("<|x|>b");  // control, longer, overlapping
  v.token_type.push_back(3);
  v.scores.push_back(0);
  auto t = MustCreate(v);
  const int32_t tool = t->TokenId("<tool>");
  const int32_t x = t->TokenId("<|x|>");
  const int32_t xb = t->TokenId("<|x|>b");
  EXPECT_THAT(t->Encode("<tool>", false, false), ElementsAre(tool));
  EXPECT_THAT(t->Encode("<tool>", false, true), ElementsAre(tool));
  EXPECT_EQ(t->TokenBytes(tool), "<tool>");
  EXPECT_THAT(t->Encode("<|x|>b<|x|>", false, true), ElementsAre(xb, x));
  EXPECT_THAT(t->Encode("<|x|>b", false, false), ::testing::Not(::testing::Contains(xb)));
}

// ---------------------------------------------------------------------------
// Incremental detokenizer.

TEST(IncrementalDetokenizerTest, HoldsBackPartialUtf8) {
  const Tokenizer& t = Demo();
  IncrementalDetokenizer d(t);
  EXPECT_EQ(d.Push(ByteId(t, 0xF0)), "");
  EXPECT_EQ(d.Push(ByteId(t, 0x9F)), "");
  EXPECT_EQ(d.Push(ByteId(t, 0xA6)), "");
  EXPECT_EQ(d.Push(ByteId(t, 0x99)), kLlamaEmoji);
  EXPECT_EQ(d.Flush(), "");
}

TEST(IncrementalDetokenizerTest, LeadingSpaceRule) {
  const Tokenizer& t = Demo();
  const int32_t hello = Id(t, kMarker + "Hello");
  const int32_t world = Id(t, kMarker + "world");
  IncrementalDetokenizer d(t);
  EXPECT_EQ(d.Push(1), "");  // BOS
  EXPECT_EQ(d.Push(hello), "Hello");
  EXPECT_EQ(d.Push(world), " world");
  EXPECT_EQ(d.Push(hello), " Hello");
  d.Reset();
  EXPECT_EQ(d.Push(world), "world");
}

TEST(IncrementalDetokenizerTest, ContinuationKeepsTheFirstSpace) {
  const Tokenizer& t = Demo();
  const int32_t hello = Id(t, kMarker + "Hello");
  const int32_t world = Id(t, kMarker + "world");
  const std::vector<int32_t> prompt = {1, hello};
  IncrementalDetokenizer d(t);
  d.ContinueAfter(prompt);
  EXPECT_EQ(d.Push(world), " world");
  // A prompt of control tokens only is still the start of the text.
  IncrementalDetokenizer e(t);
  const std::vector<int32_t> bos = {1};
  e.ContinueAfter(bos);
  EXPECT_EQ(e.Push(world), "world");
}

TEST(IncrementalDetokenizerTest, InvalidBytesBecomeReplacement) {
  const Tokenizer& t = Demo();
  IncrementalDetokenizer d(t);
  EXPECT_EQ(d.Push(ByteId(t, 0xFF)), kReplacement);  // can never be valid
  EXPECT_EQ(d.Push(ByteId(t, 0xE2)), "");
  EXPECT_EQ(d.Push(Id(t, "a")), std::string(kReplacement) + "a");
  EXPECT_EQ(d.Push(ByteId(t, 0xF0)), "");
  EXPECT_EQ(d.Push(ByteId(t, 0x9F)), "");
  EXPECT_EQ(d.Flush(), kReplacement);
  EXPECT_EQ(d.Flush(), "");
}

TEST(IncrementalDetokenizerTest, StreamEqualsSanitizedDecode) {
  const Tokenizer& t = Demo();
  std::mt19937 rng(99);
  for (int trial = 0; trial < 100; ++trial) {
    std::vector<int32_t> ids;
    if (trial % 2) ids.push_back(1);
    const int n = 1 + rng() % 20;
    for (int i = 0; i < n; ++i) ids.push_back(rng() % t.n_vocab());
    IncrementalDetokenizer d(t);
    std::string streamed;
    for (int32_t id : ids) {
      const std::string part = d.Push(id);
      EXPECT_TRUE(IsValidUtf8(part));
      streamed += part;
    }
    streamed += d.Flush();
    EXPECT_EQ(streamed, SanitizeUtf8(t.Decode(ids)));
  }
}

// ---------------------------------------------------------------------------
// Byte-level BPE on a hand-built vocabulary.

// Every byte as its byte-level character, then `extra` tokens.
Vocab BpeVocab(const std::vector<std::string>& extra, const std::vector<std::string>& merges,
               std::string pre = "gpt-2") {
  Vocab v;
  v.model = "gpt2";
  v.pre = std::move(pre);
  v.add_space_prefix = false;
  for (int b = 0; b < 256; ++b) {
    std::string s;
    AppendUtf8(ByteToUnicode(static_cast<uint8_t>(b)), &s);
    v.tokens.push_back(s);
  }
  for (const auto& e : extra) v.tokens.push_back(e);
  v.tokens.push_back("<|endoftext|>");
  v.token_type.assign(v.tokens.size(), 1);
  v.token_type.back() = 3;
  v.eos = static_cast<int32_t>(v.tokens.size()) - 1;
  v.bos = v.eos;
  v.merges = merges;
  return v;
}

TEST(BpeTest, HandDerivedMerges) {
  // "\xC4\xA0" is U+0120 'Ġ', the byte-level form of ' '.
  const std::string g = "\xC4\xA0";
  auto t = MustCreate(BpeVocab({g + "t", "he", g + "the", "lo", "low", "er"},
                               {g + " t", "h e", g + "t he", "l o", "lo w", "e r"}));
  // " the" -> Ġ t h e -> (Ġt) h e -> Ġt (he) -> (Ġthe).
  // " lower" -> Ġ l o w e r -> Ġ (lo) w e r -> Ġ (low) e r -> Ġ low (er).
  EXPECT_THAT(
      t->Encode(" the lower", false, false),
      ElementsAre(t->TokenId(g + "the"), t->TokenId(g), t->TokenId("low"), t->TokenId("er")));
  EXPECT_EQ(t->Decode(t->Encode(" the lower", false, false)), " the lower");
  EXPECT_EQ(t->TokenBytes(t->TokenId(g + "the")), " the");
}

TEST(BpeTest, RankOrderAndLeftmostTies) {
  auto ab_first = MustCreate(BpeVocab({"ab", "bc"}, {"a b", "b c"}));
  EXPECT_THAT(ab_first->Encode("abc", false, false),
              ElementsAre(ab_first->TokenId("ab"), ab_first->TokenId("c")));
  auto bc_first = MustCreate(BpeVocab({"ab", "bc"}, {"b c", "a b"}));
  EXPECT_THAT(bc_first->Encode("abc", false, false),
              ElementsAre(bc_first->TokenId("a"), bc_first->TokenId("bc")));
  auto aa = MustCreate(BpeVocab({"aa"}, {"a a"}));
  EXPECT_THAT(aa->Encode("aaa", false, false), ElementsAre(aa->TokenId("aa"), aa->TokenId("a")));
}

TEST(BpeTest, WordsDoNotMergeAcrossPreTokenizerBoundaries) {
  // "a,": the pre-tokenizer separates "a" and ",", so the merge never applies.
  auto t = MustCreate(BpeVocab({"a,"}, {"a ,"}));
  EXPECT_THAT(t->Encode("a,", false, false), ElementsAre(t->TokenId("a"), t->TokenId(",")));
}

TEST(BpeTest, IgnoreMergesKeepsWholeWordTokens) {
  const std::string g = "\xC4\xA0";
  // "Ġlow" is a token but no merge path leads to it.
  auto gpt2 = MustCreate(BpeVocab({g + "low"}, {}, "gpt-2"));
  EXPECT_EQ(gpt2->Encode(" low", false, false).size(), 4u);
  auto llama3 = MustCreate(BpeVocab({g + "low"}, {}, "llama-bpe"));
  EXPECT_THAT(llama3->Encode(" low", false, false), ElementsAre(llama3->TokenId(g + "low")));
}

TEST(BpeTest, InvalidUtf8BecomesReplacementCharacter) {
  auto t = MustCreate(BpeVocab({}, {}));
  // As in llama.cpp, the invalid byte is read as U+FFFD (EF BF BD).
  EXPECT_EQ(t->Decode(t->Encode("a\xFF", false, false)), std::string("a") + kReplacement);
}

TEST(BpeTest, CleanSpacesOnDecode) {
  auto t = MustCreate(BpeVocab({}, {}));
  EXPECT_EQ(t->Decode(t->Encode("Hi , there ! I 've a ' b", false, false)), "Hi, there! I've a'b");
  EXPECT_EQ(t->Decode(t->Encode("don 't", false, false)), "don 't");
}

TEST(BpePreTokenizeTest, Gpt2Pattern) {
  EXPECT_THAT(BpePreTokenize("Hello world's  end!!\n", BpePreTokenizer::kGpt2),
              ElementsAre("Hello", " world", "'s", " ", " end", "!!", "\n"));
  EXPECT_THAT(BpePreTokenize("I'VE 12345 x", BpePreTokenizer::kGpt2),
              ElementsAre("I", "'", "VE", " 12345", " x"));
  EXPECT_THAT(BpePreTokenize("a  ", BpePreTokenizer::kGpt2), ElementsAre("a", "  "));
  EXPECT_TRUE(BpePreTokenize("", BpePreTokenizer::kGpt2).empty());
}

TEST(BpePreTokenizeTest, Llama3Pattern) {
  EXPECT_THAT(BpePreTokenize("I'VE 12345 abc\r\n\r\nx", BpePreTokenizer::kLlama3),
              ElementsAre("I", "'VE", " ", "123", "45", " abc", "\r\n\r\n", "x"));
  EXPECT_THAT(BpePreTokenize("(hi) ...\n", BpePreTokenizer::kLlama3),
              ElementsAre("(hi", ")", " ...\n"));
}

TEST(BpePreTokenizeTest, DefaultPattern) {
  EXPECT_THAT(BpePreTokenize("a,b 1234567", BpePreTokenizer::kDefault),
              ElementsAre("a", ",", "b", " ", "123", "456", "7"));
}

TEST(BpePreTokenizeTest, UnicodeCategories) {
  // Cyrillic letters, a non-ASCII digit (Arabic-Indic 3), a CJK ideograph,
  // a no-break space (whitespace).
  EXPECT_THAT(
      BpePreTokenize("\xD0\xBF\xD1\x80 \xD9\xA3\xE4\xB8\xAD\xC2\xA0!", BpePreTokenizer::kGpt2),
      ElementsAre("\xD0\xBF\xD1\x80", " \xD9\xA3", "\xE4\xB8\xAD", "\xC2\xA0", "!"));
}

// ---------------------------------------------------------------------------
// Errors.

TEST(TokenizerErrorTest, UnknownPreTokenizer) {
  auto t = Tokenizer::Create(BpeVocab({}, {}, "no-such-pre"));
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("no-such-pre"));
  EXPECT_THAT(t.status().message(), HasSubstr("gpt-2"));
  EXPECT_THAT(t.status().message(), HasSubstr("llama-bpe"));
}

TEST(TokenizerErrorTest, BadVocabularies) {
  Vocab bert = MakeDemoVocab();
  bert.model = "bert";
  auto t = Tokenizer::Create(bert);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("gpt2"));

  Vocab short_scores = MakeDemoVocab();
  short_scores.scores.pop_back();
  EXPECT_FALSE(Tokenizer::Create(short_scores).ok());

  Vocab bad_id = MakeDemoVocab();
  bad_id.eos = kDemoVocabSize;
  EXPECT_FALSE(Tokenizer::Create(bad_id).ok());

  Vocab no_bos = MakeDemoVocab();
  no_bos.bos = -1;
  EXPECT_FALSE(Tokenizer::Create(no_bos).ok());

  EXPECT_FALSE(Tokenizer::Create(Vocab{}).ok());
}

// ---------------------------------------------------------------------------
// Loading from GGUF metadata (a vocabulary-only file built by hand).

class MiniGguf {
 public:
  void String(const std::string& key, const std::string& v) {
    Key(key, 8);
    Str(v);
  }
  void Uint32(const std::string& key, uint32_t v) {
    Key(key, 4);
    Raw(v);
  }
  void Bool(const std::string& key, bool v) {
    Key(key, 7);
    body_.push_back(v ? 1 : 0);
  }
  void Strings(const std::string& key, const std::vector<std::string>& v) {
    Key(key, 9);
    Raw(uint32_t{8});
    Raw(uint64_t{v.size()});
    for (const auto& s : v) Str(s);
  }
  void Floats(const std::string& key, const std::vector<float>& v) {
    Key(key, 9);
    Raw(uint32_t{6});
    Raw(uint64_t{v.size()});
    for (float f : v) Raw(f);
  }
  void Int32s(const std::string& key, const std::vector<int32_t>& v) {
    Key(key, 9);
    Raw(uint32_t{5});
    Raw(uint64_t{v.size()});
    for (int32_t i : v) Raw(i);
  }
  // GGUF v3, no tensors, padded to the default alignment.
  std::string Bytes() const {
    std::string out = "GGUF";
    auto raw = [&out](auto x) { out.append(reinterpret_cast<const char*>(&x), sizeof(x)); };
    raw(uint32_t{3});
    raw(uint64_t{0});
    raw(uint64_t{n_kv_});
    out += body_;
    out.resize((out.size() + 31) / 32 * 32, '\0');
    return out;
  }

 private:
  template <typename T>
  void Raw(T x) {
    body_.append(reinterpret_cast<const char*>(&x), sizeof(x));
  }
  void Str(const std::string& s) {
    Raw(uint64_t{s.size()});
    body_ += s;
  }
  void Key(const std::string& key, uint32_t type) {
    ++n_kv_;
    Str(key);
    Raw(type);
  }
  std::string body_;
  uint64_t n_kv_ = 0;
};

MiniGguf DemoGguf(bool with_scores = true) {
  const Vocab v = MakeDemoVocab();
  MiniGguf g;
  g.String("general.architecture", "llama");
  g.String("tokenizer.ggml.model", "llama");
  g.Strings("tokenizer.ggml.tokens", v.tokens);
  if (with_scores) g.Floats("tokenizer.ggml.scores", v.scores);
  g.Int32s("tokenizer.ggml.token_type", v.token_type);
  return g;
}

TEST(LoadVocabTest, VocabularyOnlyFileWithDefaults) {
  const std::string bytes = DemoGguf().Bytes();
  auto f = GgufFile::FromBuffer("demo.gguf", reinterpret_cast<const uint8_t*>(bytes.data()),
                                bytes.size());
  ASSERT_TRUE(f.ok()) << f.status();
  auto v = LoadVocab(**f);
  ASSERT_TRUE(v.ok()) << v.status();
  const Vocab want = MakeDemoVocab();
  EXPECT_EQ(v->tokens, want.tokens);
  EXPECT_EQ(v->scores, want.scores);
  EXPECT_EQ(v->token_type, want.token_type);
  // llama.cpp's SentencePiece defaults.
  EXPECT_EQ(v->bos, 1);
  EXPECT_EQ(v->eos, 2);
  EXPECT_EQ(v->unk, 0);
  EXPECT_EQ(v->eot, -1);
  EXPECT_TRUE(v->add_bos);
  EXPECT_TRUE(v->add_space_prefix);
  auto t = Tokenizer::FromGguf(**f);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->Encode("Hello world", true, false), Demo().Encode("Hello world", true, false));
}

TEST(LoadVocabTest, KeysOverrideDefaults) {
  MiniGguf g = DemoGguf();
  g.Uint32("tokenizer.ggml.eos_token_id", 5);
  g.Bool("tokenizer.ggml.add_bos_token", false);
  g.Bool("tokenizer.ggml.add_space_prefix", false);
  const std::string bytes = g.Bytes();
  auto f = GgufFile::FromBuffer("demo.gguf", reinterpret_cast<const uint8_t*>(bytes.data()),
                                bytes.size());
  ASSERT_TRUE(f.ok()) << f.status();
  auto v = LoadVocab(**f);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->eos, 5);
  EXPECT_FALSE(v->add_bos);
  EXPECT_FALSE(v->add_space_prefix);
}

TEST(LoadVocabTest, ErrorsNameFileAndKey) {
  auto load = [](const MiniGguf& g) {
    const std::string bytes = g.Bytes();
    auto f = GgufFile::FromBuffer("bad.gguf", reinterpret_cast<const uint8_t*>(bytes.data()),
                                  bytes.size());
    EXPECT_TRUE(f.ok()) << f.status();
    return f.ok() ? LoadVocab(**f).status() : f.status();
  };
  {
    MiniGguf g;
    g.Strings("tokenizer.ggml.tokens", {"a"});
    const absl::Status s = load(g);
    EXPECT_THAT(s.message(), HasSubstr("bad.gguf"));
    EXPECT_THAT(s.message(), HasSubstr("tokenizer.ggml.model"));
  }
  {
    MiniGguf g;
    g.String("tokenizer.ggml.model", "rwkv");
    g.Strings("tokenizer.ggml.tokens", {"a"});
    const absl::Status s = load(g);
    EXPECT_THAT(s.message(), HasSubstr("rwkv"));
    EXPECT_THAT(s.message(), HasSubstr("gpt2"));
  }
  {
    MiniGguf g;
    g.String("tokenizer.ggml.model", "gpt2");
    g.String("tokenizer.ggml.pre", "chatglm-bpe");
    g.Strings("tokenizer.ggml.tokens", {"a", "b"});
    g.Strings("tokenizer.ggml.merges", {"a b"});
    const absl::Status s = load(g);
    EXPECT_THAT(s.message(), HasSubstr("bad.gguf"));
    EXPECT_THAT(s.message(), HasSubstr("chatglm-bpe"));
    EXPECT_THAT(s.message(), HasSubstr("llama-bpe"));
  }
  {
    MiniGguf g;
    g.String("tokenizer.ggml.model", "gpt2");
    g.Strings("tokenizer.ggml.tokens", {"a", "b"});
    const absl::Status s = load(g);
    EXPECT_THAT(s.message(), HasSubstr("tokenizer.ggml.merges"));
  }
  {
    MiniGguf g = DemoGguf(/*with_scores=*/false);
    g.Floats("tokenizer.ggml.scores", {1.0f});  // one score for 512 tokens
    const absl::Status s = load(g);
    EXPECT_THAT(s.message(), HasSubstr("tokenizer.ggml.scores"));
  }
}

// ---------------------------------------------------------------------------
// Unicode helpers.

TEST(UnicodeTest, Validity) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain"));
  EXPECT_TRUE(IsValidUtf8("\xC3\xA9\xE2\x82\xAC\xF4\x8F\xBF\xBF"));
  EXPECT_TRUE(IsValidUtf8(kLlamaEmoji));
  EXPECT_FALSE(IsValidUtf8("\xC0\x80"));          // overlong
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // past U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xE2\x82"));          // truncated
  EXPECT_FALSE(IsValidUtf8("\x80"));
  EXPECT_EQ(SanitizeUtf8("a\xF0\x9F\x98"), std::string("a") + kReplacement);
  EXPECT_EQ(SanitizeUtf8("\xE2\x28\xA1"), std::string(kReplacement) + "(" + kReplacement);
  EXPECT_EQ(SanitizeUtf8(kLlamaEmoji), kLlamaEmoji);
  EXPECT_EQ(Utf8CompletePrefixLength("ab\xF0\x9F\xA6"), 2u);
  EXPECT_EQ(Utf8CompletePrefixLength("ab\xFF"), 3u);
}

TEST(UnicodeTest, Categories) {
  EXPECT_EQ(GetUnicodeCategory('A'), UnicodeCategory::kLetter);
  EXPECT_EQ(GetUnicodeCategory('5'), UnicodeCategory::kNumber);
  EXPECT_EQ(GetUnicodeCategory('!'), UnicodeCategory::kPunctuation);
  EXPECT_EQ(GetUnicodeCategory('$'), UnicodeCategory::kSymbol);
  EXPECT_EQ(GetUnicodeCategory(0x4E2D), UnicodeCategory::kLetter);  // CJK, in a range
  EXPECT_EQ(GetUnicodeCategory(0x0663), UnicodeCategory::kNumber);  // Arabic-Indic 3
  EXPECT_EQ(GetUnicodeCategory(0x0301), UnicodeCategory::kMark);
  EXPECT_EQ(GetUnicodeCategory(0x1F999), UnicodeCategory::kSymbol);  // llama emoji
  EXPECT_EQ(GetUnicodeCategory(0x0378), UnicodeCategory::kUndefined);
  EXPECT_EQ(GetUnicodeCategory(0x110000), UnicodeCategory::kUndefined);
  EXPECT_TRUE(IsUnicodeWhitespace(' '));
  EXPECT_TRUE(IsUnicodeWhitespace(0x3000));
  EXPECT_TRUE(IsUnicodeWhitespace(0x85));
  EXPECT_FALSE(IsUnicodeWhitespace(0x200B));
  EXPECT_FALSE(IsUnicodeWhitespace('x'));
}

TEST(UnicodeTest, ByteLevelMapping) {
  EXPECT_EQ(ByteToUnicode(' '), 0x120u);
  EXPECT_EQ(ByteToUnicode('\n'), 0x10Au);
  EXPECT_EQ(ByteToUnicode('A'), static_cast<uint32_t>('A'));
  EXPECT_EQ(ByteToUnicode(0xAD), 0x143u);
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(UnicodeToByte(ByteToUnicode(static_cast<uint8_t>(b))), b);
  }
  EXPECT_EQ(UnicodeToByte(' '), -1);
  EXPECT_EQ(UnicodeToByte(0x144), -1);
}

TEST(UnicodeTest, LenientDecodeMatchesLlamaCpp) {
  // Overlong sequences are accepted structurally; stray bytes become U+FFFD.
  EXPECT_THAT(DecodeUtf8Lenient("\xC0\x80"
                                "a\x80\xE2\x82"),
              ElementsAre(0u, 'a', 0xFFFDu, 0xFFFDu, 0xFFFDu));
}

}  // namespace
}  // namespace m40llm
