// Tokenizers for GGUF vocabularies (llama.cpp's file format):
//  - `llama`: SentencePiece-style; spaces become U+2581, symbols merge by the
//    highest-scoring adjacent pair, unknown pieces fall back to <0xXX> bytes;
//  - `gpt2`: byte-level BPE; a regex pre-tokenizer splits the text into
//    words, bytes map to printable code points, pairs merge by rank.
// Encode() and Decode() give llama.cpp's llama_tokenize / llama_detokenize
// results for the supported configurations (see Decode() for the one
// deliberate difference). IncrementalDetokenizer streams text token by token
// and only ever emits whole, valid UTF-8.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "engine/unicode.h"

namespace m40llm {

class GgufFile;

// GGUF token types (tokenizer.ggml.token_type), as stored on disk.
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// A vocabulary as GGUF metadata describes it (tokenizer.ggml.*). Special ids
// are -1 when absent.
struct Vocab {
  std::string model;                // tokenizer.ggml.model: "llama" or "gpt2"
  std::string pre;                  // tokenizer.ggml.pre (gpt2 only; "" = "default")
  std::vector<std::string> tokens;  // token texts, by id
  std::vector<float> scores;        // by id; may be empty (then all 0)
  std::vector<int32_t> token_type;  // TokenType by id; may be empty (all normal)
  std::vector<std::string> merges;  // gpt2: "left right", by rank
  int32_t bos = -1, eos = -1, eot = -1, eom = -1, unk = -1, pad = -1;
  int32_t sep = -1, cls = -1, mask = -1;
  // Fill-in-the-middle: prefix, suffix, middle, pad, repository, file separator.
  int32_t fim_pre = -1, fim_suf = -1, fim_mid = -1, fim_pad = -1, fim_rep = -1, fim_sep = -1;
  bool add_bos = false, add_eos = false;
  bool add_space_prefix = true;  // llama only: prepend U+2581 to the text
};

// Reads the vocabulary of `f` with llama.cpp's per-model defaults (llama:
// BOS 1, EOS 2, UNK 0, add_bos, add_space_prefix; gpt2: BOS = EOS = 11, no
// space prefix, add_bos only for Llama-3-style pre-tokenizers) overridden by
// whatever keys the file has. A special-token id key whose value is no token
// id (llama.cpp's converters write -1 for "none") is logged as a warning and
// treated as absent, as llama.cpp does. End-of-turn, end-of-message and
// fill-in-the-middle tokens the file does not name are found by their text
// ("<|eot_id|>", "<|im_end|>", "<|eom_id|>", "<|fim_prefix|>", ...). Missing
// scores and token types default to 0 and normal. Works for vocabulary-only
// files. Errors name the file and the key (a missing token list, an id key
// that is not an integer, arrays of the wrong length); an unsupported model
// or pre-tokenizer is an error that lists the supported ones.
absl::StatusOr<Vocab> LoadVocab(const GgufFile& f);

// The pre-tokenizer patterns implemented for byte-level BPE.
enum class BpePreTokenizer {
  // llama.cpp's "default": punctuation runs, then the GPT-2 pattern, then
  // number runs, then groups of three ASCII digits.
  kDefault,
  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kGpt2,
  // Llama 3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
  //  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  kLlama3,
  // Qwen 2: the Llama 3 pattern with \p{N} in place of \p{N}{1,3}.
  kQwen2,
};

// What llama.cpp attaches to a tokenizer.ggml.pre value.
struct BpePreTokenizerInfo {
  BpePreTokenizer kind = BpePreTokenizer::kDefault;
  bool ignore_merges = false;  // a word that is itself a token stays whole
  bool add_bos = false;        // default for tokenizer.ggml.add_bos_token
  bool clean_spaces = true;    // Decode() removes spaces before punctuation
};

// Looks up a tokenizer.ggml.pre value ("" means "default"); the error for an
// unknown one lists the supported values.
absl::StatusOr<BpePreTokenizerInfo> LookupBpePreTokenizer(std::string_view pre);

// The tokenizer.ggml.pre values accepted for `gpt2` vocabularies, as a
// comma-separated list (for messages).
std::string SupportedBpePreTokenizers();

// Splits `text` into the words pre-tokenizer `kind` yields, as UTF-8 (before
// the byte-level mapping). Invalid UTF-8 becomes U+FFFD first, as in
// llama.cpp. Concatenating the words gives back the (repaired) text.
std::vector<std::string> BpePreTokenize(std::string_view text, BpePreTokenizer kind);

// Encodes text to token ids and back for one vocabulary. Immutable after
// Create(), so one instance may serve many threads.
class Tokenizer {
 public:
  // Validates `v` (sizes of the per-token arrays, special ids in range, a
  // supported model and pre-tokenizer) and builds the lookup tables. Empty
  // token texts become "[EMPTY_<id>]" and tokens recognised as end-of-turn
  // by their text are marked control, as llama.cpp does.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Create(Vocab v);
  // LoadVocab(f), then Create().
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const GgufFile& f);

  // Token ids for `text`. add_special: prepend BOS / append EOS as the
  // vocabulary's add_bos / add_eos say. parse_special: text equal to a
  // control or unknown token's text (e.g. "<s>") becomes that token;
  // user-defined tokens are always recognised (longest texts first). For
  // `llama`, each text fragment at the start or right after a special token
  // gets the U+2581 prefix when add_space_prefix is set.
  std::vector<int32_t> Encode(std::string_view text, bool add_special, bool parse_special) const;

  // The raw vocabulary string of `id` (empty for an id out of range).
  const std::string& TokenText(int32_t id) const;

  // The bytes `id` stands for: `llama` normal tokens with U+2581 as ' ',
  // <0xXX> byte tokens as that byte; `gpt2` normal tokens with the byte-level
  // mapping undone; user-defined tokens as their text. Control, unknown,
  // unused tokens and ids out of range give "". May be invalid UTF-8.
  std::string TokenBytes(int32_t id) const;

  // The text of a whole sequence: TokenBytes() of each id, concatenated.
  // `llama` with add_space_prefix: one leading ' ' is removed from the first
  // token that is not a control token (so [BOS, "▁Hello"] gives "Hello";
  // llama.cpp would keep the space after a BOS). `gpt2`: llama.cpp's
  // clean-up of spaces before punctuation and contractions, when the
  // pre-tokenizer enables it. Returns raw bytes (not necessarily valid UTF-8).
  std::string Decode(std::span<const int32_t> ids) const;

  int32_t n_vocab() const { return static_cast<int32_t>(vocab_.tokens.size()); }
  // The most input bytes one token can stand for (the longest token text or
  // byte string): a text of more than (n + 1) * max_token_bytes() bytes
  // encodes to more than n tokens, whatever it holds.
  size_t max_token_bytes() const { return max_token_bytes_; }
  const Vocab& vocab() const { return vocab_; }
  bool is_spm() const { return kind_ == Kind::kSpm; }

  // End of generation, as llama.cpp decides it: EOS, EOT, EOM, the FIM pad,
  // repository and file-separator tokens, and any token whose text llama.cpp
  // treats as end of generation ("<|eot_id|>", "<|im_end|>", "<|endoftext|>",
  // "<|eom_id|>", ...).
  bool IsEog(int32_t id) const;
  // Every id for which IsEog() holds, ascending.
  std::vector<int32_t> EogIds() const;
  // Token type control (3); false for ids out of range.
  bool IsControl(int32_t id) const;
  // The id whose text is exactly `text` (the highest such id), or -1.
  int32_t TokenId(std::string_view text) const;

  // True when Decode() drops the SentencePiece prefix space.
  bool strips_leading_space() const { return strip_leading_space_; }

 private:
  enum class Kind { kSpm, kBpe };
  // A piece of the input: a special token (token >= 0) or raw text.
  struct Fragment {
    int32_t token;
    size_t offset;
    size_t length;
  };

  Tokenizer() = default;
  absl::Status Init();
  TokenType TypeOf(int32_t id) const;
  std::vector<Fragment> Partition(std::string_view text, bool parse_special) const;
  // Appends the ids of one raw-text fragment (already space-escaped for SPM).
  void EncodeSpm(const std::string& text, std::vector<int32_t>* out) const;
  void EncodeBpe(std::string_view text, std::vector<int32_t>* out) const;
  int32_t SpmByteToken(uint8_t b) const;
  std::string ComputeTokenBytes(int32_t id) const;

  Vocab vocab_;
  Kind kind_ = Kind::kSpm;
  BpePreTokenizer pre_ = BpePreTokenizer::kDefault;
  bool ignore_merges_ = false;  // Llama 3: a word that is a token is kept whole
  bool clean_spaces_ = false;   // gpt2 Decode() clean-up
  bool strip_leading_space_ = false;
  absl::flat_hash_map<std::string, int32_t> text_to_id_;
  absl::flat_hash_map<std::pair<std::string, std::string>, int32_t> bpe_ranks_;
  std::vector<int32_t> special_tokens_;   // control/user-defined/unknown, longest first
  std::vector<std::string> token_bytes_;  // TokenBytes() by id
  std::vector<bool> eog_;                 // IsEog() by id
  size_t max_token_bytes_ = 1;
  int32_t byte_tokens_[256] = {};         // SPM byte fallback ids (-1: none)
};

// Turns a stream of token ids into text for streaming responses. Push()
// returns only complete UTF-8 characters: a multi-byte character split over
// several tokens is held back until its last byte arrives; bytes that can
// never become valid are replaced by U+FFFD right away. Flush() returns what
// is still held (an incomplete character becomes U+FFFD). For `llama`
// vocabularies with add_space_prefix, one leading space is dropped from the
// first token that is not a control token (the first one after BOS), as
// Decode() does. gpt2 space clean-up is not applied. Not thread-safe; the
// Tokenizer must outlive it.
class IncrementalDetokenizer {
 public:
  explicit IncrementalDetokenizer(const Tokenizer& tokenizer);

  // Adds one token; returns the text that became complete.
  std::string Push(int32_t id);
  // Returns everything held back and empties the buffer.
  std::string Flush();
  // Starts a new sequence (the leading-space rule applies again).
  void Reset();
  // Marks the stream as the continuation of `prompt`: when the prompt holds
  // any text token, the leading-space rule does not apply to the first
  // pushed token (its space separates it from the prompt's last word).
  void ContinueAfter(std::span<const int32_t> prompt);

 private:
  const Tokenizer* tokenizer_;
  std::string pending_;  // bytes of an incomplete UTF-8 sequence
  bool at_start_ = true;
};

}  // namespace m40llm
