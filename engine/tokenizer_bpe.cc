// Byte-level BPE (`gpt2`) encoding: the regex pre-tokenizers (hand-written
// matchers over Unicode categories, no regex engine), the byte-to-code-point
// mapping, and rank-ordered pair merging within each word.
#include <algorithm>
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/status.h"
#include "engine/tokenizer.h"

namespace m40llm {
namespace {

// ---------------------------------------------------------------------------
// Pre-tokenizer table.

struct PreEntry {
  const char* name;
  BpePreTokenizerInfo info;
};

constexpr BpePreTokenizerInfo kInfoDefault{BpePreTokenizer::kDefault, false, false, true};
constexpr BpePreTokenizerInfo kInfoGpt2{BpePreTokenizer::kGpt2, false, false, true};
// Llama 3 proper: whole-word tokens skip merging and BOS is added by default.
constexpr BpePreTokenizerInfo kInfoLlama3{BpePreTokenizer::kLlama3, true, true, true};
// Vocabularies that share Llama 3's pattern but not its other settings.
constexpr BpePreTokenizerInfo kInfoLlama3Pattern{BpePreTokenizer::kLlama3, false, false, true};
// Qwen 1.5 / 2 / 2.5 and the DeepSeek-R1 distills of them: no BOS, no space
// clean-up.
constexpr BpePreTokenizerInfo kInfoQwen2{BpePreTokenizer::kQwen2, false, false, false};

// The names llama.cpp maps to these patterns (and nothing model-specific).
constexpr PreEntry kPreTokenizers[] = {
    {"default", kInfoDefault},  {"gpt-2", kInfoGpt2},         {"phi-2", kInfoGpt2},
    {"roberta-bpe", kInfoGpt2}, {"mpt", kInfoGpt2},           {"olmo", kInfoGpt2},
    {"llama3", kInfoLlama3},    {"llama-v3", kInfoLlama3},    {"llama-bpe", kInfoLlama3},
    {"falcon3", kInfoLlama3},   {"dbrx", kInfoLlama3Pattern}, {"smaug-bpe", kInfoLlama3Pattern},
    {"qwen2", kInfoQwen2},      {"deepseek-r1-qwen", kInfoQwen2}, {"megrez", kInfoQwen2},
};

// ---------------------------------------------------------------------------
// Pre-tokenizer matchers. The text is a code point array cut into segments
// (lengths, in code points, covering it); each pattern splits every segment
// further, never across segment boundaries, as llama.cpp's
// unicode_regex_split does when it applies a list of patterns in turn.

using Segments = std::vector<size_t>;

// Per-code-point properties the patterns look at.
enum : uint8_t {
  kPresent = 1,  // inside the current segment (every real code point)
  kLetter = 2,   // \p{L}
  kNumber = 4,   // \p{N}
  kSpace = 8,    // \s (White_Space)
  kPunct = 16,   // \p{P}
};

constexpr uint32_t kOutOfRange = 0xFFFFFFFF;

struct CodepointText {
  std::vector<uint32_t> cpts;
  std::vector<uint8_t> props;

  explicit CodepointText(std::string_view utf8) : cpts(DecodeUtf8Lenient(utf8)) {
    props.resize(cpts.size());
    for (size_t i = 0; i < cpts.size(); ++i) {
      const uint32_t c = cpts[i];
      uint8_t p = kPresent;
      switch (GetUnicodeCategory(c)) {
        case UnicodeCategory::kLetter:
          p |= kLetter;
          break;
        case UnicodeCategory::kNumber:
          p |= kNumber;
          break;
        case UnicodeCategory::kPunctuation:
          p |= kPunct;
          break;
        default:
          break;
      }
      if (IsUnicodeWhitespace(c)) p |= kSpace;
      props[i] = p;
    }
  }
};

// Views one segment [ini, end): positions outside it read as kOutOfRange with
// no properties, which is how the patterns see the segment's edges.
class SegmentView {
 public:
  SegmentView(const CodepointText& t, size_t ini, size_t end) : t_(t), ini_(ini), end_(end) {}
  uint32_t Cpt(size_t pos) const {
    return (pos >= ini_ && pos < end_) ? t_.cpts[pos] : kOutOfRange;
  }
  uint8_t Props(size_t pos) const { return (pos >= ini_ && pos < end_) ? t_.props[pos] : 0; }
  size_t end() const { return end_; }

 private:
  const CodepointText& t_;
  size_t ini_;
  size_t end_;
};

// Collects word lengths: each call ends the current word at `end`.
class WordSink {
 public:
  WordSink(Segments* out, size_t start) : out_(out), prev_end_(start) {}
  void EndAt(size_t end) {
    if (end > prev_end_) out_->push_back(end - prev_end_);
    prev_end_ = end;
  }

 private:
  Segments* out_;
  size_t prev_end_;
};

// [^\s\p{L}\p{N}] for a position inside the segment.
inline bool IsOther(uint8_t p) { return (p & kPresent) && !(p & (kSpace | kLetter | kNumber)); }

inline bool IsCrLf(uint32_t c) { return c == '\r' || c == '\n'; }

// 's|'t|'re|'ve|'m|'ll|'d at pos (ASCII letters, optionally either case);
// returns the match length or 0.
size_t MatchContraction(const SegmentView& v, size_t pos, bool any_case) {
  if (v.Cpt(pos) != '\'' || pos + 1 >= v.end()) return 0;
  // Only ASCII letters lowercase to these letters (besides U+0130 -> 'i' and
  // U+212A -> 'k', which do not occur here), so ASCII folding is exact.
  auto fold = [any_case](uint32_t c) {
    return (any_case && c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
  };
  const uint32_t c1 = fold(v.Cpt(pos + 1));
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
  if (pos + 2 >= v.end()) return 0;
  const uint32_t c2 = fold(v.Cpt(pos + 2));
  if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
    return 3;
  }
  return 0;
}

// \s+(?!\S)|\s+ at pos, given that no earlier alternative matched: a run of
// whitespace, minus its last character when non-space text follows inside the
// segment (so that character can lead the next word). Returns the new pos.
size_t MatchSpaces(const SegmentView& v, size_t pos) {
  size_t n = 0;
  while (v.Props(pos + n) & kSpace) ++n;
  if (n > 1 && v.Cpt(pos + n) != kOutOfRange) return pos + n - 1;
  if (n > 0) return pos + n;
  return pos + 1;  // no alternative matches: the character stands alone
}

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|
// \s+(?!\S)|\s+
Segments SplitGpt2(const CodepointText& t, const Segments& segs) {
  Segments out;
  out.reserve(segs.size());
  size_t start = 0;
  for (size_t len : segs) {
    const SegmentView v(t, start, start + len);
    WordSink sink(&out, start);
    for (size_t pos = start; pos < v.end();) {
      if (size_t n = MatchContraction(v, pos, /*any_case=*/false)) {
        pos += n;
        sink.EndAt(pos);
        continue;
      }
      const uint32_t c = v.Cpt(pos);
      // The class the optional leading space would attach to.
      const uint8_t p = (c == ' ') ? v.Props(pos + 1) : v.Props(pos);
      if (p & (kLetter | kNumber)) {
        const uint8_t cls = p & kLetter ? kLetter : kNumber;
        pos += (c == ' ');
        while (v.Props(pos) & cls) ++pos;
        sink.EndAt(pos);
        continue;
      }
      if (IsOther(p)) {
        pos += (c == ' ');
        while (IsOther(v.Props(pos))) ++pos;
        sink.EndAt(pos);
        continue;
      }
      pos = MatchSpaces(v, pos);
      sink.EndAt(pos);
    }
    start += len;
  }
  return out;
}

// Llama 3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// Qwen 2 is the same pattern with \p{N} (one digit a word): max_digits 1.
Segments SplitLlama3(const CodepointText& t, const Segments& segs, size_t max_digits) {
  Segments out;
  out.reserve(segs.size());
  size_t start = 0;
  for (size_t len : segs) {
    const SegmentView v(t, start, start + len);
    WordSink sink(&out, start);
    for (size_t pos = start; pos < v.end();) {
      if (size_t n = MatchContraction(v, pos, /*any_case=*/true)) {
        pos += n;
        sink.EndAt(pos);
        continue;
      }
      const uint32_t c = v.Cpt(pos);
      const uint8_t here = v.Props(pos);
      // [^\r\n\p{L}\p{N}]?\p{L}+
      if (!IsCrLf(c) && !(here & kNumber) && ((here & kLetter) || (v.Props(pos + 1) & kLetter))) {
        ++pos;
        while (v.Props(pos) & kLetter) ++pos;
        sink.EndAt(pos);
        continue;
      }
      // \p{N}{1,max_digits}
      if (here & kNumber) {
        size_t group = pos;
        while (v.Props(pos) & kNumber) {
          if (++pos - group >= max_digits) {
            sink.EndAt(pos);
            group = pos;
          }
        }
        sink.EndAt(pos);
        continue;
      }
      // ' ?[^\s\p{L}\p{N}]+[\r\n]*'. As in llama.cpp, a lone space at the
      // segment's end also lands here (the same word \s+ would give).
      const uint8_t p = (c == ' ') ? v.Props(pos + 1) : here;
      if (!(p & (kSpace | kLetter | kNumber))) {
        pos += (c == ' ');
        while (IsOther(v.Props(pos))) ++pos;
        while (IsCrLf(v.Cpt(pos))) ++pos;
        sink.EndAt(pos);
        continue;
      }
      // \s*[\r\n]+: whitespace up to and including its last CR/LF.
      size_t n = 0;
      size_t after_crlf = 0;
      while (v.Props(pos + n) & kSpace) {
        if (IsCrLf(v.Cpt(pos + n))) after_crlf = pos + n + 1;
        ++n;
      }
      if (after_crlf > 0) {
        pos = after_crlf;
        sink.EndAt(pos);
        continue;
      }
      pos = MatchSpaces(v, pos);
      sink.EndAt(pos);
    }
    start += len;
  }
  return out;
}

// A pattern of the form `[class]+` or a fixed-length sequence: `match(pos,
// end)` gives the length of the match starting at pos (0 for none). Like a
// regex search it takes the leftmost match, resumes after it, and keeps the
// unmatched stretches in between as words of their own.
template <typename Match>
Segments SplitByMatches(const Segments& segs, Match match) {
  Segments out;
  out.reserve(segs.size());
  size_t start = 0;
  for (size_t len : segs) {
    const size_t end = start + len;
    size_t gap = start;
    for (size_t pos = start; pos < end;) {
      const size_t n = match(pos, end);
      if (n == 0) {
        ++pos;
        continue;
      }
      if (pos > gap) out.push_back(pos - gap);
      out.push_back(n);
      pos += n;
      gap = pos;
    }
    if (end > gap) out.push_back(end - gap);
    start = end;
  }
  return out;
}

// llama.cpp's "default": [\p{P}\$\+<=>\^~\|]+ , the GPT-2 pattern, \p{N}+ ,
// [0-9][0-9][0-9] , applied in turn.
Segments SplitDefault(const CodepointText& t, Segments segs) {
  auto run_of = [&t](auto pred) {
    return [&t, pred](size_t pos, size_t end) {
      size_t n = 0;
      while (pos + n < end && pred(t.cpts[pos + n], t.props[pos + n])) ++n;
      return n;
    };
  };
  segs = SplitByMatches(segs, run_of([](uint32_t c, uint8_t p) {
                          return (p & kPunct) || c == '$' || c == '+' || c == '<' || c == '=' ||
                                 c == '>' || c == '^' || c == '~' || c == '|';
                        }));
  segs = SplitGpt2(t, segs);
  segs = SplitByMatches(segs, run_of([](uint32_t, uint8_t p) { return (p & kNumber) != 0; }));
  auto is_digit = [&t](size_t i) { return t.cpts[i] >= '0' && t.cpts[i] <= '9'; };
  segs = SplitByMatches(segs, [&](size_t pos, size_t end) -> size_t {
    return (pos + 3 <= end && is_digit(pos) && is_digit(pos + 1) && is_digit(pos + 2)) ? 3 : 0;
  });
  return segs;
}

// ---------------------------------------------------------------------------
// Merging.

struct Symbol {
  int prev;
  int next;
  size_t offset;
  size_t n;
};

struct Bigram {
  int left;
  int right;
  std::string text;
  int32_t rank;
};

// Lowest rank first; among equal ranks the leftmost pair.
struct BigramOrder {
  bool operator()(const Bigram& a, const Bigram& b) const {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  }
};

}  // namespace

absl::StatusOr<BpePreTokenizerInfo> LookupBpePreTokenizer(std::string_view pre) {
  if (pre.empty()) pre = "default";
  for (const PreEntry& e : kPreTokenizers) {
    if (pre == e.name) return e.info;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported BPE pre-tokenizer '", Sv(pre),
                   "' (tokenizer.ggml.pre); supported: ", SupportedBpePreTokenizers()));
}

std::string SupportedBpePreTokenizers() {
  std::vector<std::string> names;
  for (const PreEntry& e : kPreTokenizers) names.emplace_back(e.name);
  return absl::StrJoin(names, ", ");
}

std::vector<std::string> BpePreTokenize(std::string_view text, BpePreTokenizer kind) {
  const CodepointText t(text);
  Segments segs;
  if (!t.cpts.empty()) segs.push_back(t.cpts.size());
  switch (kind) {
    case BpePreTokenizer::kDefault:
      segs = SplitDefault(t, std::move(segs));
      break;
    case BpePreTokenizer::kGpt2:
      segs = SplitGpt2(t, segs);
      break;
    case BpePreTokenizer::kLlama3:
      segs = SplitLlama3(t, segs, 3);
      break;
    case BpePreTokenizer::kQwen2:
      segs = SplitLlama3(t, segs, 1);
      break;
  }
  std::vector<std::string> words;
  words.reserve(segs.size());
  size_t start = 0;
  for (size_t len : segs) {
    std::string w;
    for (size_t i = start; i < start + len; ++i) AppendUtf8(t.cpts[i], &w);
    words.push_back(std::move(w));
    start += len;
  }
  return words;
}

void Tokenizer::EncodeBpe(std::string_view text, std::vector<int32_t>* out) const {
  std::vector<Symbol> symbols;
  std::priority_queue<Bigram, std::vector<Bigram>, BigramOrder> queue;
  for (const std::string& raw_word : BpePreTokenize(text, pre_)) {
    // Byte-level mapping: every byte becomes one printable code point.
    std::string word;
    for (char c : raw_word) AppendUtf8(ByteToUnicode(static_cast<uint8_t>(c)), &word);

    if (ignore_merges_) {
      if (auto it = text_to_id_.find(word); it != text_to_id_.end()) {
        out->push_back(it->second);
        continue;
      }
    }
    symbols.clear();
    for (size_t off = 0; off < word.size();) {
      const size_t n = std::min(Utf8SequenceLength(word[off]), word.size() - off);
      const int index = static_cast<int>(symbols.size());
      off += n;
      symbols.push_back({index - 1, off == word.size() ? -1 : index + 1, off - n, n});
    }
    auto text_of = [&](int i) { return word.substr(symbols[i].offset, symbols[i].n); };
    auto add_bigram = [&](int left, int right) {
      if (left == -1 || right == -1) return;
      std::string l = text_of(left);
      std::string r = text_of(right);
      auto it = bpe_ranks_.find(std::make_pair(l, r));
      if (it == bpe_ranks_.end()) return;
      queue.push({left, right, l + r, it->second});
    };
    for (int i = 1; i < static_cast<int>(symbols.size()); ++i) add_bigram(i - 1, i);

    while (!queue.empty()) {
      Bigram b = queue.top();
      queue.pop();
      Symbol& left = symbols[b.left];
      Symbol& right = symbols[b.right];
      if (left.n == 0 || right.n == 0) continue;
      // Stale entry: the pair's texts changed since it was queued.
      if (text_of(b.left) + text_of(b.right) != b.text) continue;
      left.n += right.n;
      right.n = 0;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = b.left;
      add_bigram(left.prev, b.left);
      add_bigram(b.left, left.next);
    }

    for (const Symbol& s : symbols) {
      if (s.n == 0) continue;
      const std::string piece = word.substr(s.offset, s.n);
      if (auto it = text_to_id_.find(piece); it != text_to_id_.end()) {
        out->push_back(it->second);
        continue;
      }
      // Not a token: llama.cpp tries each byte of the mapped text on its own
      // and drops the ones that are not tokens either.
      for (char c : piece) {
        if (auto it = text_to_id_.find(std::string(1, c)); it != text_to_id_.end()) {
          out->push_back(it->second);
        }
      }
    }
  }
}

}  // namespace m40llm
