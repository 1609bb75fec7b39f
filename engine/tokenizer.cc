// Vocabulary loading, tokenizer set-up, special-token partitioning, the
// Encode/Decode entry points and the incremental detokenizer. The per-model
// merge loops live in tokenizer_spm.cc and tokenizer_bpe.cc.
#include "engine/tokenizer.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/gguf.h"
#include "engine/status.h"
#include "spdlog/spdlog.h"

namespace m40llm {
namespace {

constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";  // U+2581 '▁'

// Token texts llama.cpp treats as end of generation whatever the file says.
constexpr std::array<std::string_view, 7> kEogTexts = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>",
};

// Special tokens a file may leave unnamed, recognised by their text as
// llama.cpp recognises them; each such token is also made a control token.
struct TextDetected {
  std::vector<std::string_view> texts;
  int32_t Vocab::*id;
};
const std::array<TextDetected, 8> kTextDetected = {{
    {{"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>",
      "<\xEF\xBD\x9C" "end\xE2\x96\x81" "of\xE2\x96\x81" "sentence\xEF\xBD\x9C>"},  // DeepSeek
     &Vocab::eot},
    {{"<|eom_id|>"}, &Vocab::eom},
    {{"<|fim_prefix|>", "<fim-prefix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "begin\xEF\xBD\x9C>",
      "<PRE>"},
     &Vocab::fim_pre},
    {{"<|fim_suffix|>", "<fim-suffix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "hole\xEF\xBD\x9C>",
      "<SUF>"},
     &Vocab::fim_suf},
    {{"<|fim_middle|>", "<fim-middle>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "end\xEF\xBD\x9C>",
      "<MID>"},
     &Vocab::fim_mid},
    {{"<|fim_pad|>", "<fim-pad>", "<PAD>"}, &Vocab::fim_pad},
    {{"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>"}, &Vocab::fim_rep},
    {{"<|file_sep|>"}, &Vocab::fim_sep},
}};

template <size_t N>
bool OneOf(const std::array<std::string_view, N>& set, std::string_view s) {
  return std::find(set.begin(), set.end(), s) != set.end();
}

void ReplaceAll(std::string* s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s->size());
  size_t pos = 0;
  while (true) {
    const size_t hit = s->find(from, pos);
    if (hit == std::string::npos) break;
    out.append(*s, pos, hit - pos);
    out.append(to);
    pos = hit + from.size();
  }
  out.append(*s, pos, std::string::npos);
  *s = std::move(out);
}

// llama.cpp's clean_up_tokenization_spaces for BPE vocabularies, three
// in-place passes: drop the space in " ?", " !", " .", " ,"; drop both spaces
// around a lone "'"; drop the space before "'s", "'m", "'re", "'ve". Kept
// byte-for-byte faithful, including the NUL that the second pass leaves where
// it removed a space (it blocks a match on the next character).
std::string CleanSpaces(std::string t) {
  auto is_stop = [](char x) { return x == '?' || x == '!' || x == '.' || x == ','; };
  size_t n = t.size();
  size_t total = n ? 1 : 0;
  for (size_t i = 1; i < n; ++i) {
    const char x = t[i];
    if (t[i - 1] == ' ' && is_stop(x)) --total;
    t[total++] = x;
  }
  t.resize(total);

  n = t.size();
  total = n ? 1 : 0;
  for (size_t i = 1; i < n; ++i) {
    const char x = t[i];
    if (x == '\'' && i + 1 < n && t[i - 1] == ' ' && t[i + 1] == ' ') {
      --total;        // the space before
      t[++i] = '\0';  // and the one after, which is skipped
    }
    t[total++] = x;
  }
  t.resize(total);

  n = t.size();
  total = n ? 1 : 0;
  for (size_t i = 1; i < n; ++i) {
    const char x = t[i];
    if (t[i - 1] == ' ' && x == '\'' && i + 1 < n) {
      const char x1 = t[i + 1];
      if (x1 == 's' || x1 == 'm') {
        --total;
      } else if (x1 != 't' && x1 != 'd' && i + 2 < n) {
        const char x2 = t[i + 2];
        if ((x1 == 'r' && x2 == 'e') || (x1 == 'v' && x2 == 'e')) --total;
      }
    }
    t[total++] = x;
  }
  t.resize(total);
  return t;
}

// Reads an optional special-token id key into `*id`. A value that is no
// token id (negative, as llama.cpp's converters write for "none", or past the
// vocabulary) is logged and leaves `*id` at its default, as llama.cpp does; a
// value that is not an integer at all is an error.
absl::Status ReadId(const GgufFile& f, std::string_view key, size_t n_tokens, int32_t* id) {
  const GgufValue* v = f.Find(key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_integer()) {
    return absl::InvalidArgumentError(
        absl::StrCat(f.path(), ": metadata key '", Sv(key), "' must be an integer token id"));
  }
  // 32-bit keys are how every converter writes ids: read them as int32 so
  // that -1 stored unsigned (4294967295) is -1, not a huge id.
  const bool narrow = v->type == GgufValueType::kUint32 || v->type == GgufValueType::kInt32;
  const int64_t value = narrow ? static_cast<int32_t>(static_cast<uint32_t>(v->u)) : v->i;
  const bool is_unsigned64 = v->type == GgufValueType::kUint64;
  if (value < 0 || static_cast<uint64_t>(value) >= n_tokens ||
      (is_unsigned64 && v->u >= n_tokens)) {
    spdlog::warn("{}: metadata key '{}' = {} is not a token id (vocabulary of {} tokens); "
                 "treated as absent",
                 f.path(), std::string(key), is_unsigned64 ? std::to_string(v->u) : std::to_string(value),
                 n_tokens);
    return absl::OkStatus();
  }
  *id = static_cast<int32_t>(value);
  return absl::OkStatus();
}

absl::Status ReadBool(const GgufFile& f, std::string_view key, bool* out) {
  if (f.Find(key) == nullptr) return absl::OkStatus();
  ASSIGN_OR_RETURN(*out, f.GetBool(key));
  return absl::OkStatus();
}

// An array-typed key, checked for element kind and (when n > 0) length.
absl::StatusOr<const GgufValue*> FindArray(const GgufFile& f, std::string_view key, bool strings,
                                           uint64_t n) {
  const GgufValue* v = f.Find(key);
  if (v == nullptr) {
    return absl::NotFoundError(absl::StrCat(f.path(), ": missing metadata key '", Sv(key), "'"));
  }
  const bool is_string = v->elem_type == GgufValueType::kString;
  const bool is_number =
      v->elem_type != GgufValueType::kString && v->elem_type != GgufValueType::kArray;
  if (v->type != GgufValueType::kArray || (strings ? !is_string : !is_number)) {
    return absl::InvalidArgumentError(absl::StrCat(f.path(), ": metadata key '", Sv(key),
                                                   "' must be an array of ",
                                                   strings ? "strings" : "numbers"));
  }
  if (n > 0 && v->count != n) {
    return absl::InvalidArgumentError(absl::StrCat(f.path(), ": metadata key '", Sv(key), "' has ",
                                                   v->count, " entries, expected ", n,
                                                   " (one per token)"));
  }
  return v;
}

}  // namespace

absl::StatusOr<Vocab> LoadVocab(const GgufFile& f) {
  Vocab v;
  ASSIGN_OR_RETURN(v.model, f.GetString("tokenizer.ggml.model"));
  if (f.Find("tokenizer.ggml.pre") != nullptr) {
    ASSIGN_OR_RETURN(v.pre, f.GetString("tokenizer.ggml.pre"));
  }
  const bool spm = v.model == "llama";
  if (!spm && v.model != "gpt2") {
    return absl::InvalidArgumentError(absl::StrCat(
        f.path(), ": unsupported tokenizer model '", v.model,
        "' (tokenizer.ggml.model); supported: llama (SentencePiece), gpt2 (byte-level BPE)"));
  }

  ASSIGN_OR_RETURN(const GgufValue* tokens,
                   FindArray(f, "tokenizer.ggml.tokens", /*strings=*/true, 0));
  const size_t n = tokens->strings.size();
  if (n == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(f.path(), ": metadata key 'tokenizer.ggml.tokens' is empty"));
  }
  v.tokens.assign(tokens->strings.begin(), tokens->strings.end());
  if (f.Find("tokenizer.ggml.scores") != nullptr) {
    ASSIGN_OR_RETURN(const GgufValue* s,
                     FindArray(f, "tokenizer.ggml.scores", /*strings=*/false, n));
    v.scores.resize(n);
    for (size_t i = 0; i < n; ++i) v.scores[i] = static_cast<float>(s->NumberAt(i));
  }
  if (f.Find("tokenizer.ggml.token_type") != nullptr) {
    ASSIGN_OR_RETURN(const GgufValue* t,
                     FindArray(f, "tokenizer.ggml.token_type", /*strings=*/false, n));
    v.token_type.resize(n);
    for (size_t i = 0; i < n; ++i) v.token_type[i] = static_cast<int32_t>(t->IntAt(i));
  }

  // llama.cpp's defaults per model, before the file's own keys.
  if (spm) {
    v.bos = n > 1 ? 1 : -1;
    v.eos = n > 2 ? 2 : -1;
    v.unk = 0;
    v.add_bos = true;
    v.add_space_prefix = true;
  } else {
    ASSIGN_OR_RETURN(const GgufValue* merges,
                     FindArray(f, "tokenizer.ggml.merges", /*strings=*/true, 0));
    v.merges.assign(merges->strings.begin(), merges->strings.end());
    auto info = LookupBpePreTokenizer(v.pre);
    if (!info.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(f.path(), ": ", info.status().message()));
    }
    v.bos = v.eos = n > 11 ? 11 : -1;
    v.add_bos = info->add_bos;
    v.add_space_prefix = false;
  }
  const std::pair<std::string_view, int32_t*> id_keys[] = {
      {"tokenizer.ggml.bos_token_id", &v.bos},
      {"tokenizer.ggml.eos_token_id", &v.eos},
      {"tokenizer.ggml.eot_token_id", &v.eot},
      {"tokenizer.ggml.eom_token_id", &v.eom},
      {"tokenizer.ggml.unknown_token_id", &v.unk},
      {"tokenizer.ggml.seperator_token_id", &v.sep},  // sic: the GGUF key is misspelt
      {"tokenizer.ggml.padding_token_id", &v.pad},
      {"tokenizer.ggml.cls_token_id", &v.cls},
      {"tokenizer.ggml.mask_token_id", &v.mask},
      {"tokenizer.ggml.fim_pre_token_id", &v.fim_pre},
      {"tokenizer.ggml.fim_suf_token_id", &v.fim_suf},
      {"tokenizer.ggml.fim_mid_token_id", &v.fim_mid},
      {"tokenizer.ggml.fim_pad_token_id", &v.fim_pad},
      {"tokenizer.ggml.fim_rep_token_id", &v.fim_rep},
      {"tokenizer.ggml.fim_sep_token_id", &v.fim_sep},
      // Older names of the first three FIM keys.
      {"tokenizer.ggml.prefix_token_id", &v.fim_pre},
      {"tokenizer.ggml.suffix_token_id", &v.fim_suf},
      {"tokenizer.ggml.middle_token_id", &v.fim_mid},
  };
  for (const auto& [key, id] : id_keys) RETURN_IF_ERROR(ReadId(f, key, n, id));
  RETURN_IF_ERROR(ReadBool(f, "tokenizer.ggml.add_bos_token", &v.add_bos));
  RETURN_IF_ERROR(ReadBool(f, "tokenizer.ggml.add_eos_token", &v.add_eos));
  RETURN_IF_ERROR(ReadBool(f, "tokenizer.ggml.add_space_prefix", &v.add_space_prefix));
  // Tokens the file does not name, found by their text (the lowest id
  // wins); like llama.cpp, make each a control token.
  for (const auto& [texts, id] : kTextDetected) {
    int32_t* field = &(v.*id);
    if (*field != -1) continue;
    for (size_t i = 0; i < n && *field == -1; ++i) {
      if (std::find(texts.begin(), texts.end(), v.tokens[i]) != texts.end()) {
        *field = static_cast<int32_t>(i);
        if (v.token_type.empty()) v.token_type.assign(n, static_cast<int32_t>(TokenType::kNormal));
        v.token_type[i] = static_cast<int32_t>(TokenType::kControl);
      }
    }
  }
  return v;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Create(Vocab v) {
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  t->vocab_ = std::move(v);
  RETURN_IF_ERROR(t->Init());
  return t;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const GgufFile& f) {
  ASSIGN_OR_RETURN(Vocab v, LoadVocab(f));
  auto t = Create(std::move(v));
  if (!t.ok()) {
    return absl::Status(t.status().code(), absl::StrCat(f.path(), ": ", t.status().message()));
  }
  return t;
}

absl::Status Tokenizer::Init() {
  Vocab& v = vocab_;
  if (v.model == "llama") {
    kind_ = Kind::kSpm;
  } else if (v.model == "gpt2") {
    kind_ = Kind::kBpe;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported tokenizer model '", v.model,
                     "'; supported: llama (SentencePiece), gpt2 (byte-level BPE)"));
  }
  const size_t n = v.tokens.size();
  if (n == 0) return absl::InvalidArgumentError("vocabulary has no tokens");
  if (n > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError("vocabulary too large");
  }
  if (!v.scores.empty() && v.scores.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocabulary has ", v.scores.size(), " scores for ", n, " tokens"));
  }
  if (!v.token_type.empty() && v.token_type.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocabulary has ", v.token_type.size(), " token types for ", n, " tokens"));
  }
  const std::pair<const char*, int32_t> ids[] = {
      {"bos", v.bos},         {"eos", v.eos},         {"eot", v.eot},
      {"eom", v.eom},         {"unk", v.unk},         {"pad", v.pad},
      {"sep", v.sep},         {"cls", v.cls},         {"mask", v.mask},
      {"fim_pre", v.fim_pre}, {"fim_suf", v.fim_suf}, {"fim_mid", v.fim_mid},
      {"fim_pad", v.fim_pad}, {"fim_rep", v.fim_rep}, {"fim_sep", v.fim_sep}};
  for (const auto& [name, id] : ids) {
    if (id < -1 || id >= static_cast<int32_t>(n)) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " token id ", id, " is out of range (vocabulary has ", n, " tokens)"));
    }
  }
  if (v.add_bos && v.bos < 0) {
    return absl::InvalidArgumentError("add_bos is set but the vocabulary has no BOS token");
  }
  if (v.add_eos && v.eos < 0) {
    return absl::InvalidArgumentError("add_eos is set but the vocabulary has no EOS token");
  }
  if (kind_ == Kind::kBpe) {
    ASSIGN_OR_RETURN(const BpePreTokenizerInfo info, LookupBpePreTokenizer(v.pre));
    pre_ = info.kind;
    ignore_merges_ = info.ignore_merges;
    clean_spaces_ = info.clean_spaces;
    bpe_ranks_.reserve(v.merges.size());
    for (size_t i = 0; i < v.merges.size(); ++i) {
      // Split at the first space after position 0, as llama.cpp does; the
      // first occurrence of a pair keeps its rank.
      const std::string& m = v.merges[i];
      const size_t sp = m.find(' ', 1);
      if (sp == std::string::npos) continue;
      bpe_ranks_.try_emplace(std::make_pair(m.substr(0, sp), m.substr(sp + 1)),
                             static_cast<int32_t>(i));
    }
  }
  strip_leading_space_ = kind_ == Kind::kSpm && v.add_space_prefix;

  if (v.token_type.empty()) v.token_type.assign(n, static_cast<int32_t>(TokenType::kNormal));
  text_to_id_.reserve(n);
  eog_.assign(n, false);
  for (size_t i = 0; i < n; ++i) {
    if (v.tokens[i].empty()) v.tokens[i] = absl::StrCat("[EMPTY_", i, "]");
    text_to_id_[v.tokens[i]] = static_cast<int32_t>(i);  // later ids win
    if (OneOf(kEogTexts, v.tokens[i])) {
      eog_[i] = true;
      // llama.cpp overrides the type of end-of-turn-looking tokens.
      v.token_type[i] = static_cast<int32_t>(TokenType::kControl);
    }
  }
  for (int32_t id : {v.eos, v.eot, v.eom, v.fim_pad, v.fim_rep, v.fim_sep}) {
    if (id >= 0) eog_[id] = true;
  }

  for (size_t i = 0; i < n; ++i) {
    const TokenType t = TypeOf(static_cast<int32_t>(i));
    if (t == TokenType::kControl || t == TokenType::kUserDefined || t == TokenType::kUnknown) {
      special_tokens_.push_back(static_cast<int32_t>(i));
    }
  }
  std::stable_sort(special_tokens_.begin(), special_tokens_.end(),
                   [&v](int32_t a, int32_t b) { return v.tokens[a].size() > v.tokens[b].size(); });

  for (int b = 0; b < 256; ++b) {
    byte_tokens_[b] = -1;
    if (kind_ != Kind::kSpm) continue;
    // <0xXX> first, then the byte itself as a token, then <unk>.
    auto it = text_to_id_.find(absl::StrFormat("<0x%02X>", b));
    if (it == text_to_id_.end()) it = text_to_id_.find(std::string(1, static_cast<char>(b)));
    byte_tokens_[b] = it != text_to_id_.end() ? it->second : v.unk;
  }

  token_bytes_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    token_bytes_[i] = ComputeTokenBytes(static_cast<int32_t>(i));
    max_token_bytes_ = std::max({max_token_bytes_, token_bytes_[i].size(), v.tokens[i].size()});
  }
  return absl::OkStatus();
}

TokenType Tokenizer::TypeOf(int32_t id) const {
  const int32_t t = vocab_.token_type[id];
  return (t >= 1 && t <= 6) ? static_cast<TokenType>(t) : TokenType::kUndefined;
}

int32_t Tokenizer::SpmByteToken(uint8_t b) const { return byte_tokens_[b]; }

std::string Tokenizer::ComputeTokenBytes(int32_t id) const {
  const std::string& text = vocab_.tokens[id];
  switch (TypeOf(id)) {
    case TokenType::kUserDefined:
      return text;
    case TokenType::kNormal:
      if (kind_ == Kind::kSpm) {
        std::string s = text;
        ReplaceAll(&s, kSpaceMarker, " ");
        return s;
      } else {
        std::string s;
        for (uint32_t c : DecodeUtf8Lenient(text)) {
          const int b = UnicodeToByte(c);
          if (b >= 0) {
            s.push_back(static_cast<char>(b));
          } else {
            AppendUtf8(c, &s);  // not from the byte-level alphabet: keep as is
          }
        }
        return s;
      }
    case TokenType::kByte:
      // SPM "<0xXX>"; llama.cpp gives BPE byte tokens no text.
      if (kind_ == Kind::kSpm && text.size() == 6 && text.compare(0, 3, "<0x") == 0) {
        return std::string(1,
                           static_cast<char>(std::strtol(text.substr(3, 2).c_str(), nullptr, 16)));
      }
      return "";
    default:  // control, unknown, unused, undefined
      return "";
  }
}

const std::string& Tokenizer::TokenText(int32_t id) const {
  static const std::string kEmpty;
  if (id < 0 || id >= n_vocab()) return kEmpty;
  return vocab_.tokens[id];
}

std::string Tokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= n_vocab()) return "";
  return token_bytes_[id];
}

bool Tokenizer::IsEog(int32_t id) const { return id >= 0 && id < n_vocab() && eog_[id]; }

std::vector<int32_t> Tokenizer::EogIds() const {
  std::vector<int32_t> ids;
  for (int32_t id = 0; id < n_vocab(); ++id) {
    if (eog_[id]) ids.push_back(id);
  }
  return ids;
}

bool Tokenizer::IsControl(int32_t id) const {
  return id >= 0 && id < n_vocab() && TypeOf(id) == TokenType::kControl;
}

int32_t Tokenizer::TokenId(std::string_view text) const {
  auto it = text_to_id_.find(Sv(text));
  return it == text_to_id_.end() ? -1 : it->second;
}

std::vector<Tokenizer::Fragment> Tokenizer::Partition(std::string_view text,
                                                      bool parse_special) const {
  std::vector<Fragment> frags;
  if (!text.empty()) frags.push_back({-1, 0, text.size()});
  std::vector<Fragment> next;
  for (int32_t id : special_tokens_) {
    const TokenType type = TypeOf(id);
    // Without parse_special only user-defined tokens are split out.
    if (!parse_special && type != TokenType::kUserDefined) continue;
    const std::string& st = vocab_.tokens[id];
    next.clear();
    for (const Fragment& f : frags) {
      if (f.token >= 0) {
        next.push_back(f);
        continue;
      }
      const std::string_view body = text.substr(f.offset, f.length);
      size_t pos = 0;
      while (true) {
        const size_t hit = body.find(st, pos);
        if (hit == std::string_view::npos) break;
        if (hit > pos) next.push_back({-1, f.offset + pos, hit - pos});
        next.push_back({id, 0, 0});
        pos = hit + st.size();
      }
      if (pos < body.size()) next.push_back({-1, f.offset + pos, body.size() - pos});
    }
    frags.swap(next);
  }
  return frags;
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_special,
                                       bool parse_special) const {
  std::vector<int32_t> out;
  if (add_special && vocab_.add_bos) out.push_back(vocab_.bos);
  // SPM: the space prefix goes on the text at the start and after each
  // special token (llama.cpp's "previous fragment was special" rule).
  bool prev_special = true;
  for (const Fragment& f : Partition(text, parse_special)) {
    if (f.token >= 0) {
      out.push_back(f.token);
      prev_special = true;
      continue;
    }
    const std::string_view body = text.substr(f.offset, f.length);
    if (kind_ == Kind::kSpm) {
      std::string s;
      if (vocab_.add_space_prefix && prev_special) s.push_back(' ');
      s.append(body);
      ReplaceAll(&s, " ", kSpaceMarker);
      EncodeSpm(s, &out);
    } else {
      EncodeBpe(body, &out);
    }
    prev_special = false;
  }
  if (add_special && vocab_.add_eos) out.push_back(vocab_.eos);
  return out;
}

std::string Tokenizer::Decode(std::span<const int32_t> ids) const {
  std::string text;
  bool at_start = true;
  for (int32_t id : ids) {
    static const std::string kNone;
    const std::string& piece = (id >= 0 && id < n_vocab()) ? token_bytes_[id] : kNone;
    if (at_start && !IsControl(id)) {
      at_start = false;
      if (strip_leading_space_ && !piece.empty() && piece[0] == ' ') {
        text.append(piece, 1, std::string::npos);
        continue;
      }
    }
    text.append(piece);
  }
  if (clean_spaces_) text = CleanSpaces(std::move(text));
  return text;
}

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer)
    : tokenizer_(&tokenizer) {}

std::string IncrementalDetokenizer::Push(int32_t id) {
  std::string piece = tokenizer_->TokenBytes(id);
  if (at_start_ && !tokenizer_->IsControl(id)) {
    at_start_ = false;
    if (tokenizer_->strips_leading_space() && !piece.empty() && piece[0] == ' ') {
      piece.erase(0, 1);
    }
  }
  pending_.append(piece);
  const size_t n = Utf8CompletePrefixLength(pending_);
  std::string out = SanitizeUtf8(std::string_view(pending_).substr(0, n));
  pending_.erase(0, n);
  return out;
}

std::string IncrementalDetokenizer::Flush() {
  std::string out = SanitizeUtf8(pending_);
  pending_.clear();
  return out;
}

void IncrementalDetokenizer::Reset() {
  pending_.clear();
  at_start_ = true;
}

void IncrementalDetokenizer::ContinueAfter(std::span<const int32_t> prompt) {
  for (int32_t id : prompt) {
    if (!tokenizer_->IsControl(id)) {
      at_start_ = false;
      return;
    }
  }
}

}  // namespace m40llm
