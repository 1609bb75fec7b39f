// Unicode helpers: category lookup over the generated range table, UTF-8
// decoding (lenient, as llama.cpp's tokenizer decodes) and strict validation,
// and the GPT-2 byte-level mapping.
#include "engine/unicode.h"

#include <algorithm>
#include <array>

namespace m40llm {
namespace {

#include "engine/unicode_data.inc"

constexpr uint32_t kReplacement = 0xFFFD;
constexpr uint32_t kMaxCodepoint = 0x10FFFF;

inline bool IsCont(uint8_t b) { return (b & 0xC0) == 0x80; }

// Result of looking at the UTF-8 sequence starting at s[i].
enum class Scan { kValid, kInvalid, kTruncated };

// Strict scan of one sequence (Unicode Table 3-7). On kValid, *len is the
// sequence length and *cpt its value; on kInvalid, *len is the length of the
// maximal ill-formed subpart (>= 1); on kTruncated, the input ends inside a
// sequence that is well-formed so far and *len is what remains.
Scan ScanUtf8(std::string_view s, size_t i, size_t* len, uint32_t* cpt) {
  const uint8_t b0 = static_cast<uint8_t>(s[i]);
  if (b0 < 0x80) {
    *len = 1;
    *cpt = b0;
    return Scan::kValid;
  }
  size_t need;        // continuation bytes after the lead
  uint8_t lo = 0x80;  // allowed range of the first continuation byte
  uint8_t hi = 0xBF;
  uint32_t value;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
    value = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    value = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;  // no overlongs
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    value = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;  // no overlongs
    if (b0 == 0xF4) hi = 0x8F;  // nothing past U+10FFFF
  } else {
    *len = 1;
    return Scan::kInvalid;
  }
  for (size_t k = 1; k <= need; ++k) {
    if (i + k >= s.size()) {
      *len = k;
      return Scan::kTruncated;
    }
    const uint8_t b = static_cast<uint8_t>(s[i + k]);
    const bool ok = (k == 1) ? (b >= lo && b <= hi) : IsCont(b);
    if (!ok) {
      *len = k;
      return Scan::kInvalid;
    }
    value = (value << 6) | (b & 0x3F);
  }
  *len = need + 1;
  *cpt = value;
  return Scan::kValid;
}

// The byte -> code point table of GPT-2's byte-level encoding.
std::array<uint32_t, 256> MakeByteToUnicode() {
  std::array<uint32_t, 256> map{};
  std::array<bool, 256> printable{};
  for (int b = 0x21; b <= 0x7E; ++b) printable[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
  uint32_t next = 0x100;
  for (int b = 0; b < 256; ++b) map[b] = printable[b] ? b : next++;
  return map;
}

const std::array<uint32_t, 256>& ByteTable() {
  static const std::array<uint32_t, 256> table = MakeByteToUnicode();
  return table;
}

}  // namespace

UnicodeCategory GetUnicodeCategory(uint32_t cpt) {
  if (cpt > kMaxCodepoint) return UnicodeCategory::kUndefined;
  // Last range whose first code point is <= cpt; entry 0 starts at 0.
  const CategoryRange* end = kCategoryRanges + kCategoryRangeCount;
  const CategoryRange* it = std::upper_bound(
      kCategoryRanges, end, cpt, [](uint32_t c, const CategoryRange& r) { return c < r.first; });
  return (it - 1)->category;
}

bool IsUnicodeWhitespace(uint32_t cpt) {
  return std::binary_search(kWhiteSpace, kWhiteSpace + kWhiteSpaceCount, cpt);
}

size_t Utf8SequenceLength(char lead) {
  static constexpr uint8_t kByHighNibble[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kByHighNibble[static_cast<uint8_t>(lead) >> 4];
}

void AppendUtf8(uint32_t cpt, std::string* out) {
  if (cpt > kMaxCodepoint) cpt = kReplacement;
  if (cpt < 0x80) {
    out->push_back(static_cast<char>(cpt));
  } else if (cpt < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cpt >> 6)));
    out->push_back(static_cast<char>(0x80 | (cpt & 0x3F)));
  } else if (cpt < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cpt >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cpt >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cpt & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cpt >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cpt >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cpt >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cpt & 0x3F)));
  }
}

std::vector<uint32_t> DecodeUtf8Lenient(std::string_view s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const uint8_t b0 = static_cast<uint8_t>(s[i]);
    size_t need;
    uint32_t value;
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    } else if ((b0 & 0xE0) == 0xC0) {
      need = 1;
      value = b0 & 0x1F;
    } else if ((b0 & 0xF0) == 0xE0) {
      need = 2;
      value = b0 & 0x0F;
    } else if ((b0 & 0xF8) == 0xF0) {
      need = 3;
      value = b0 & 0x07;
    } else {  // stray continuation byte or 0xF8..0xFF
      out.push_back(kReplacement);
      ++i;
      continue;
    }
    bool ok = i + need < s.size();
    for (size_t k = 1; ok && k <= need; ++k) {
      const uint8_t b = static_cast<uint8_t>(s[i + k]);
      ok = IsCont(b);
      value = (value << 6) | (b & 0x3F);
    }
    if (!ok) {
      out.push_back(kReplacement);
      ++i;
      continue;
    }
    // llama.cpp cannot re-encode such values (it throws); map them to U+FFFD.
    out.push_back(value > kMaxCodepoint ? kReplacement : value);
    i += need + 1;
  }
  return out;
}

bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t len;
    uint32_t cpt;
    if (ScanUtf8(s, i, &len, &cpt) != Scan::kValid) return false;
    i += len;
  }
  return true;
}

std::string SanitizeUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    size_t len;
    uint32_t cpt;
    if (ScanUtf8(s, i, &len, &cpt) == Scan::kValid) {
      out.append(s.substr(i, len));
    } else {
      AppendUtf8(kReplacement, &out);
    }
    i += len;
  }
  return out;
}

size_t Utf8CompletePrefixLength(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t len;
    uint32_t cpt;
    if (ScanUtf8(s, i, &len, &cpt) == Scan::kTruncated) return i;
    i += len;
  }
  return s.size();
}

uint32_t ByteToUnicode(uint8_t b) { return ByteTable()[b]; }

int UnicodeToByte(uint32_t cpt) {
  // The image of ByteToUnicode() lies below U+0144 (0x100 + 68).
  static const std::array<int16_t, 0x144> inverse = [] {
    std::array<int16_t, 0x144> inv;
    inv.fill(-1);
    for (int b = 0; b < 256; ++b) inv[ByteTable()[b]] = static_cast<int16_t>(b);
    return inv;
  }();
  return cpt < inverse.size() ? inverse[cpt] : -1;
}

}  // namespace m40llm
