// Unicode helpers for the tokenizers: code point categories (from a table
// generated out of the Unicode Character Database), UTF-8 decoding and
// validation, and GPT-2's byte-level byte<->code point mapping.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace m40llm {

// Major General_Category class of a code point. Unassigned code points (Cn)
// and values past U+10FFFF are kUndefined.
enum class UnicodeCategory : uint8_t {
  kUndefined = 0,
  kLetter = 1,       // \p{L}
  kNumber = 2,       // \p{N}
  kPunctuation = 3,  // \p{P}
  kSymbol = 4,       // \p{S}
  kMark = 5,         // \p{M}
  kSeparator = 6,    // \p{Z}
  kControl = 7,      // \p{C} other than Cn: Cc, Cf, Co, Cs
};

// One entry of the generated category table (engine/unicode_data.inc).
struct CategoryRange {
  uint32_t first;
  UnicodeCategory category;
};

// The category of `cpt`.
UnicodeCategory GetUnicodeCategory(uint32_t cpt);

// True for code points with the White_Space property (what `\s` matches in
// the Rust/Python regex engines the pre-tokenizer patterns come from).
bool IsUnicodeWhitespace(uint32_t cpt);

inline bool IsUnicodeLetter(uint32_t cpt) {
  return GetUnicodeCategory(cpt) == UnicodeCategory::kLetter;
}
inline bool IsUnicodeNumber(uint32_t cpt) {
  return GetUnicodeCategory(cpt) == UnicodeCategory::kNumber;
}

// Byte length of the UTF-8 sequence that `lead` starts, judged by its high
// nibble only (continuation and invalid bytes count as 1): the rule
// SentencePiece-style splitting into characters uses.
size_t Utf8SequenceLength(char lead);

// Appends `cpt` as UTF-8; values past U+10FFFF append U+FFFD.
void AppendUtf8(uint32_t cpt, std::string* out);

// Decodes UTF-8 the way llama.cpp's tokenizer does: structurally (lead byte
// plus the right number of continuation bytes, no overlong/surrogate checks);
// a byte that does not start such a sequence yields U+FFFD and decoding
// resumes at the next byte. Values past U+10FFFF become U+FFFD.
std::vector<uint32_t> DecodeUtf8Lenient(std::string_view s);

// Strict UTF-8 validity (RFC 3629: no overlongs, no surrogates, <= U+10FFFF).
bool IsValidUtf8(std::string_view s);

// Replaces each maximal ill-formed subsequence of `s` with U+FFFD (the
// Unicode "substitution of maximal subparts" practice); valid input is
// returned unchanged.
std::string SanitizeUtf8(std::string_view s);

// Length of the longest prefix of `s` after which only an incomplete (but so
// far well-formed) UTF-8 sequence remains: s.substr(n) is empty or could still
// become valid with more bytes. Ill-formed bytes before that point are left
// for SanitizeUtf8 to replace.
size_t Utf8CompletePrefixLength(std::string_view s);

// GPT-2 byte-level BPE maps every byte to a printable code point: printable
// Latin-1 bytes ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF) map to themselves,
// the other 68 bytes to U+0100.. in increasing byte order.
uint32_t ByteToUnicode(uint8_t b);
// The inverse of ByteToUnicode(); -1 for code points outside its image.
int UnicodeToByte(uint32_t cpt);

}  // namespace m40llm
