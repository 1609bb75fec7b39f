// SentencePiece-style (`llama`) encoding of one text fragment: split into
// UTF-8 characters, repeatedly merge the adjacent pair whose concatenation is
// the highest-scoring vocabulary token (leftmost on ties), then emit each
// final symbol as its token, or as <0xXX> byte tokens when it is none.
#include <algorithm>
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include "engine/tokenizer.h"

namespace m40llm {
namespace {

// A run of bytes of the text, linked to its neighbours; n == 0 once merged
// into the symbol on its left.
struct Symbol {
  int prev;
  int next;
  size_t offset;
  size_t n;
};

struct Bigram {
  int left;
  int right;
  float score;
  size_t size;  // bytes of left + right when the pair was queued
};

// Highest score first; among equal scores the leftmost pair.
struct BigramOrder {
  bool operator()(const Bigram& a, const Bigram& b) const {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  }
};

class SpmSession {
 public:
  SpmSession(const std::string& text, const std::vector<float>& scores,
             const absl::flat_hash_map<std::string, int32_t>& text_to_id)
      : text_(text), scores_(scores), text_to_id_(text_to_id) {}

  // Merges and returns the final symbols' texts in order through `emit`.
  template <typename Emit>
  void Run(Emit&& emit) {
    for (size_t off = 0; off < text_.size();) {
      const size_t n = CharLength(off);
      const int index = static_cast<int>(symbols_.size());
      off += n;
      symbols_.push_back({index - 1, off == text_.size() ? -1 : index + 1, off - n, n});
    }
    for (int i = 1; i < static_cast<int>(symbols_.size()); ++i) {
      TryAddBigram(i - 1, i);
    }
    while (!queue_.empty()) {
      const Bigram b = queue_.top();
      queue_.pop();
      Symbol& left = symbols_[b.left];
      Symbol& right = symbols_[b.right];
      // Stale entry: one side was merged elsewhere since it was queued.
      if (left.n == 0 || right.n == 0 || left.n + right.n != b.size) continue;
      left.n += right.n;
      right.n = 0;
      left.next = right.next;
      if (right.next >= 0) symbols_[right.next].prev = b.left;
      TryAddBigram(left.prev, b.left);
      TryAddBigram(b.left, left.next);
    }
    if (symbols_.empty()) return;
    for (int i = 0; i != -1; i = symbols_[i].next) Resegment(i, emit);
  }

 private:
  // Bytes of the character at `off`: the length its lead byte announces when
  // that many bytes follow as continuation bytes, else 1. For well-formed
  // UTF-8 this is llama.cpp's split; llama.cpp trusts the lead byte blindly,
  // so a stray lead byte there swallows the next bytes (even half of an
  // escaped space) and the text no longer decodes back. Taking 1 byte keeps
  // such input round-tripping through byte tokens.
  size_t CharLength(size_t off) const {
    const size_t want = Utf8SequenceLength(text_[off]);
    if (off + want > text_.size()) return 1;
    for (size_t k = 1; k < want; ++k) {
      if ((static_cast<uint8_t>(text_[off + k]) & 0xC0) != 0x80) return 1;
    }
    return want;
  }

  std::string Text(int i) const { return text_.substr(symbols_[i].offset, symbols_[i].n); }

  void TryAddBigram(int left, int right) {
    if (left == -1 || right == -1) return;
    std::string joined = text_.substr(symbols_[left].offset, symbols_[left].n + symbols_[right].n);
    auto it = text_to_id_.find(joined);
    if (it == text_to_id_.end()) return;
    const int32_t id = it->second;
    const float score = id < static_cast<int32_t>(scores_.size()) ? scores_[id] : 0.0f;
    queue_.push({left, right, score, joined.size()});
    // Remembers how a merged text was formed, for Resegment().
    rev_merge_[std::move(joined)] = {left, right};
  }

  // Emits symbol i as a token if it is one; otherwise splits it back into the
  // pair it was merged from, or (for a single unknown character) leaves the
  // bytes to the caller.
  template <typename Emit>
  void Resegment(int i, Emit& emit) {
    const std::string text = Text(i);
    auto it = text_to_id_.find(text);
    if (it != text_to_id_.end()) {
      emit.Token(it->second);
      return;
    }
    auto p = rev_merge_.find(text);
    if (p == rev_merge_.end()) {
      emit.Bytes(text);
      return;
    }
    Resegment(p->second.first, emit);
    Resegment(p->second.second, emit);
  }

  const std::string& text_;
  const std::vector<float>& scores_;
  const absl::flat_hash_map<std::string, int32_t>& text_to_id_;
  std::vector<Symbol> symbols_;
  std::priority_queue<Bigram, std::vector<Bigram>, BigramOrder> queue_;
  absl::flat_hash_map<std::string, std::pair<int, int>> rev_merge_;
};

}  // namespace

void Tokenizer::EncodeSpm(const std::string& text, std::vector<int32_t>* out) const {
  struct Emitter {
    const Tokenizer* tok;
    std::vector<int32_t>* out;
    void Token(int32_t id) { out->push_back(id); }
    void Bytes(const std::string& s) {
      for (char c : s) {
        const int32_t id = tok->SpmByteToken(static_cast<uint8_t>(c));
        if (id >= 0) out->push_back(id);
      }
    }
  } emit{this, out};
  SpmSession session(text, vocab_.scores, text_to_id_);
  session.Run(emit);
}

}  // namespace m40llm
