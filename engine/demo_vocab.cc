// Builds the demo vocabulary: special and byte tokens, single characters,
// then prefix chains of common English words ("▁t", "▁th", "▁the") and
// frequent letter groups, padded with letter pairs to kDemoVocabSize tokens,
// then optionally with "<extra_ID>" filler tokens to a larger size.
#include "engine/demo_vocab.h"

#include <algorithm>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace m40llm {
namespace {

constexpr std::string_view kMarker = "\xE2\x96\x81";  // U+2581, a word start

// Score of the first filler token (the next ones count down from it); the
// demo pieces score 0 down to about -kDemoVocabSize. Every score stays an
// exact float up to about 15 million tokens.
constexpr float kFillerScore = -1.0e6f;

// Common English words, most frequent first; each contributes the chain of
// its "▁"-prefixed prefixes.
constexpr std::string_view kWords[] = {
    "the",   "of",   "and",  "to",   "in",   "is",    "it",    "you",   "that",  "he",
    "was",   "for",  "on",   "are",  "with", "as",    "I",     "his",   "they",  "be",
    "at",    "one",  "have", "this", "from", "or",    "had",   "by",    "word",  "but",
    "what",  "some", "we",   "can",  "out",  "other", "were",  "all",   "there", "when",
    "up",    "use",  "your", "how",  "said", "an",    "each",  "she",   "which", "do",
    "their", "time", "if",   "will", "The",  "Hello", "world", "model", "token", "text",
};

// Frequent letter groups inside words, added after the words so that
// word-start pieces merge first.
constexpr std::string_view kInnerPieces[] = {
    "er", "ed", "es", "en", "re", "on",  "an",  "at",  "or",
    "ar", "st", "nd", "ou", "ly", "ing", "ion", "ent",
};

class Builder {
 public:
  explicit Builder(Vocab* v) : v_(v) {}

  bool full() const { return v_->tokens.size() >= kDemoVocabSize; }

  void Add(std::string text, TokenType type, float score) {
    if (full() || !seen_.insert(text).second) return;
    v_->tokens.push_back(std::move(text));
    v_->scores.push_back(score);
    v_->token_type.push_back(static_cast<int32_t>(type));
  }

  // Normal pieces get descending scores in the order they are added.
  void AddPiece(std::string text) {
    Add(std::move(text), TokenType::kNormal, -static_cast<float>(next_rank_++));
  }

  // Adds every prefix of `s` of two or more UTF-8 characters.
  void AddChain(const std::string& s) {
    for (size_t end = 1; end <= s.size(); ++end) {
      if (end < s.size() && (static_cast<uint8_t>(s[end]) & 0xC0) == 0x80) continue;
      const std::string prefix = s.substr(0, end);
      if (CharCount(prefix) >= 2) AddPiece(prefix);
    }
  }

 private:
  static size_t CharCount(const std::string& s) {
    size_t n = 0;
    for (char c : s) n += (static_cast<uint8_t>(c) & 0xC0) != 0x80;
    return n;
  }

  Vocab* v_;
  absl::flat_hash_set<std::string> seen_;
  int next_rank_ = 0;
};

}  // namespace

Vocab MakeDemoVocab(int n_tokens) {
  Vocab v;
  v.model = "llama";
  v.pre = "default";
  v.unk = 0;
  v.bos = 1;
  v.eos = 2;
  v.add_bos = true;
  v.add_eos = false;
  v.add_space_prefix = true;

  Builder b(&v);
  b.Add("<unk>", TokenType::kUnknown, 0.0f);
  b.Add("<s>", TokenType::kControl, 0.0f);
  b.Add("</s>", TokenType::kControl, 0.0f);
  for (int i = 0; i < 256; ++i) {
    b.Add(absl::StrFormat("<0x%02X>", i), TokenType::kByte, 0.0f);
  }
  b.AddPiece(std::string(kMarker));
  for (char c = '!'; c <= '~'; ++c) b.AddPiece(std::string(1, c));
  for (std::string_view w : kWords) b.AddChain(std::string(kMarker) + std::string(w));
  for (std::string_view s : kInnerPieces) b.AddChain(std::string(s));
  // Pad with two-letter pieces in a fixed order until the size is reached.
  for (char a = 'a'; a <= 'z' && !b.full(); ++a) {
    for (const char* c = "eaiou"; *c != '\0' && !b.full(); ++c) {
      b.AddPiece(std::string{a, *c});
    }
  }
  // Filler: its text contains '<', '_' and digits in an order that no chain
  // of demo pieces builds, so SentencePiece merging never reaches it.
  const size_t want = static_cast<size_t>(std::max(n_tokens, kDemoVocabSize));
  v.tokens.reserve(want);
  v.scores.reserve(want);
  v.token_type.reserve(want);
  for (size_t id = v.tokens.size(); id < want; ++id) {
    v.tokens.push_back(absl::StrCat("<extra_", id, ">"));
    v.scores.push_back(kFillerScore - static_cast<float>(id - kDemoVocabSize));
    v.token_type.push_back(static_cast<int32_t>(TokenType::kNormal));
  }
  return v;
}

}  // namespace m40llm
