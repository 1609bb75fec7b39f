// Hand-made GGUF files for robustness tests: small valid files whose field
// offsets are computed while they are built, and a corpus of broken variants
// made from them by targeted corruption at those offsets. Shared by
// tests/engine/gguf_malformed_test.cc and the fuzzer's seed corpus tool, so
// it is header-only and needs nothing beyond the GGUF writer.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/ggml_types.h"
#include "engine/gguf.h"
#include "engine/gguf_writer.h"

namespace m40llm::testing {

// Byte offsets of one tensor's fields in a built file.
struct GgufTensorLayout {
  uint64_t info_at = 0;     // start of its info record (the name length)
  uint64_t n_dims_at = 0;   // uint32 n_dims
  uint64_t dims_at = 0;     // uint64 dims[n_dims]
  uint64_t type_at = 0;     // uint32 ggml type
  uint64_t offset_at = 0;   // uint64 offset relative to the data section
  uint64_t rel_offset = 0;  // the value stored there
  uint64_t data_at = 0;     // absolute offset of its bytes
  uint64_t n_bytes = 0;
};

// Byte offsets of every field a corruption targets, computed from the GGUF
// layout rules (not read back from the writer), so a test also pins the
// writer's output format.
struct GgufLayout {
  std::map<std::string, uint64_t> kv_at;     // start of the record (key length)
  std::map<std::string, uint64_t> value_at;  // first byte after the type field
  std::map<std::string, GgufTensorLayout> tensors;
  uint64_t infos_end = 0;   // end of the last tensor info record
  uint64_t data_start = 0;  // the data section (infos_end rounded up)
  // Shortest prefix that still parses: the end of the last tensor's bytes
  // (the trailing padding is optional), or infos_end without tensors.
  uint64_t min_valid_size = 0;
};

// A built file and its layout.
struct GgufSample {
  std::string name;
  std::string bytes;
  GgufLayout layout;
};

// One broken file and what the reader must say about it.
struct MalformedGguf {
  std::string name;  // identifier: [A-Za-z0-9_]+
  std::string bytes;
  uint64_t offset = 0;  // the byte offset the error must name
  std::string phrase;   // text the error must contain
};

// Overwrites sizeof(T) bytes at `at` with `v`, little-endian.
template <typename T>
void PatchLe(std::string* bytes, uint64_t at, T v) {
  static_assert(std::is_trivially_copyable_v<T>);
  std::memcpy(bytes->data() + at, &v, sizeof(T));
}

// Wraps GgufWriter and tracks the offset of each field it writes. All
// metadata must be added before the first tensor (the writer puts tensor
// infos after all metadata; Finish() computes their offsets).
class TrackingGgufWriter {
 public:
  explicit TrackingGgufWriter(uint32_t alignment = 32)
      : writer_(alignment), alignment_(alignment) {
    if (alignment != 32) Mark("general.alignment", 4);
  }

  void AddString(std::string_view key, std::string_view v) {
    Mark(key, 8 + v.size());
    writer_.AddString(key, v);
  }
  void AddBool(std::string_view key, bool v) {
    Mark(key, 1);
    writer_.AddBool(key, v);
  }
  void AddUint32(std::string_view key, uint32_t v) {
    Mark(key, 4);
    writer_.AddUint32(key, v);
  }
  void AddStringArray(std::string_view key, const std::vector<std::string>& v) {
    uint64_t n = 12;
    for (const std::string& s : v) n += 8 + s.size();
    Mark(key, n);
    writer_.AddStringArray(key, v);
  }
  void AddFloat32Array(std::string_view key, const std::vector<float>& v) {
    Mark(key, 12 + 4 * v.size());
    writer_.AddFloat32Array(key, v);
  }
  void AddRawArray(std::string_view key, GgufValueType elem_type,
                   uint64_t count, const std::string& encoded) {
    Mark(key, 12 + encoded.size());
    writer_.AddRawArray(key, elem_type, count, encoded);
  }

  // Adds a tensor whose bytes are a deterministic pattern of the right size.
  absl::Status AddTensor(std::string_view name, GgmlType type,
                         std::vector<uint64_t> dims) {
    const auto traits = TypeTraits(static_cast<uint32_t>(type));
    if (!traits) return absl::InvalidArgumentError("unknown type");
    uint64_t n = 1;
    for (uint64_t d : dims) n *= d;
    std::string data(n / traits->block_elems * traits->block_bytes, '\0');
    for (size_t i = 0; i < data.size(); ++i) {
      data[i] = static_cast<char>((i * 7 + name.size() * 13 + 1) & 0xff);
    }
    pending_.push_back({std::string(name), dims.size(), data.size()});
    return writer_.AddTensor(name, type, std::move(dims), std::move(data));
  }

  // Serialises and returns the file with its layout.
  GgufSample Finish(std::string name) {
    GgufSample s;
    s.name = std::move(name);
    s.bytes = writer_.Serialize();
    s.layout = layout_;
    uint64_t pos = pos_;
    for (const Pending& p : pending_) {
      GgufTensorLayout t;
      t.info_at = pos;
      t.n_dims_at = pos + 8 + p.name.size();
      t.dims_at = t.n_dims_at + 4;
      t.type_at = t.dims_at + 8 * p.n_dims;
      t.offset_at = t.type_at + 4;
      t.n_bytes = p.n_bytes;
      pos = t.offset_at + 8;
      s.layout.tensors[p.name] = t;
    }
    s.layout.infos_end = pos;
    s.layout.data_start = RoundUp(pos);
    s.layout.min_valid_size = pos;
    uint64_t rel = 0;
    for (const Pending& p : pending_) {
      GgufTensorLayout& t = s.layout.tensors[p.name];
      t.rel_offset = rel;
      t.data_at = s.layout.data_start + rel;
      s.layout.min_valid_size = t.data_at + t.n_bytes;
      rel = RoundUp(rel + t.n_bytes);
    }
    return s;
  }

 private:
  struct Pending {
    std::string name;
    size_t n_dims;
    uint64_t n_bytes;
  };

  // Records a KV record of `value_bytes` value bytes at the current end.
  // Header: magic(4) version(4) n_tensors(8) n_kv(8); a record is key
  // (u64 length + bytes), u32 type, then the value.
  void Mark(std::string_view key, uint64_t value_bytes) {
    layout_.kv_at[std::string(key)] = pos_;
    const uint64_t value_at = pos_ + 8 + key.size() + 4;
    layout_.value_at[std::string(key)] = value_at;
    pos_ = value_at + value_bytes;
  }

  uint64_t RoundUp(uint64_t n) const {
    return (n + alignment_ - 1) / alignment_ * alignment_;
  }

  GgufWriter writer_;
  uint32_t alignment_;
  uint64_t pos_ = 24;
  GgufLayout layout_;
  std::vector<Pending> pending_;
};

// Payload of a `levels`-deep nested array (for AddRawArray with elem type
// kArray and count 1; levels >= 2): each level holds one array, the deepest
// an empty uint8 array. Level k's elem type field is at value_at + 12*(k-1).
inline std::string NestedArrayPayload(int levels) {
  std::string inner = GgufWriter::EncodeArray(GgufValueType::kUint8, 0, "");
  for (int k = levels - 1; k >= 2; --k) {
    inner = GgufWriter::EncodeArray(GgufValueType::kArray, 1, inner);
  }
  return inner;
}

// The small valid file the corpus corrupts: metadata of every shape the
// reader distinguishes (string, bool, integer, bool array, string array,
// float array, nested array) and two tensors, "t.a" (F32 [8]) and "t.b"
// (Q4_0 [32, 2]).
inline GgufSample BaseGguf(uint32_t alignment = 32) {
  TrackingGgufWriter w(alignment);
  w.AddString("general.architecture", "llama");
  w.AddBool("m.flag", true);
  w.AddUint32("m.u32a", 7);
  w.AddUint32("m.u32b", 8);
  w.AddRawArray("m.bools", GgufValueType::kBool, 3, std::string("\1\0\1", 3));
  w.AddStringArray("m.tokens", {"a", "bc"});
  w.AddFloat32Array("m.f32s", {1.0f, 2.0f, 3.0f});
  w.AddRawArray("m.nested", GgufValueType::kArray, 2,
                GgufWriter::EncodeArray(GgufValueType::kUint8, 2, "\1\2") +
                    GgufWriter::EncodeArray(GgufValueType::kUint8, 1, "\3"));
  // Both calls are valid by construction; a failure shows up as a missing
  // tensor in the layout checks of the tests.
  (void)w.AddTensor("t.a", GgmlType::kF32, {8});
  (void)w.AddTensor("t.b", GgmlType::kQ4_0, {32, 2});
  return w.Finish(alignment == 32 ? "base"
                                  : absl::StrCat("base_align", alignment));
}

// A valid tokenizer-only file: no tensors.
inline GgufSample VocabOnlyGguf() {
  TrackingGgufWriter w;
  w.AddString("tokenizer.ggml.model", "gpt2");
  w.AddStringArray("tokenizer.ggml.tokens", {"<s>", "</s>", "a", "b", "ab"});
  w.AddFloat32Array("tokenizer.ggml.scores", {0, 0, -1, -2, -3});
  w.AddStringArray("tokenizer.ggml.merges", {"a b"});
  return w.Finish("vocab_only");
}

// The valid files the corpus is made from (also fuzzer seeds).
inline std::vector<GgufSample> ValidGgufSamples() {
  std::vector<GgufSample> out;
  out.push_back(BaseGguf());
  out.push_back(BaseGguf(64));
  out.push_back(VocabOnlyGguf());
  return out;
}

// Every broken case, each with the offset and phrase its error must carry.
inline std::vector<MalformedGguf> MalformedGgufCorpus() {
  constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();
  std::vector<MalformedGguf> out;
  const GgufSample base = BaseGguf();
  const GgufLayout& L = base.layout;
  const GgufTensorLayout& ta = L.tensors.at("t.a");
  const GgufTensorLayout& tb = L.tensors.at("t.b");

  // Copies the base file, applies `patch`, and records the expectation.
  auto add = [&out, &base](std::string name, uint64_t offset,
                           std::string phrase, auto patch) {
    MalformedGguf m{std::move(name), base.bytes, offset, std::move(phrase)};
    patch(&m.bytes);
    out.push_back(std::move(m));
  };
  // A single little-endian overwrite.
  auto put = [&add](std::string name, uint64_t at, auto v, std::string phrase,
                    uint64_t offset) {
    add(std::move(name), offset, std::move(phrase),
        [at, v](std::string* b) { PatchLe(b, at, v); });
  };

  out.push_back({"empty", "", 0, "truncated file: need 4 bytes for magic"});
  out.push_back(
      {"magic_only", "GGUF", 4, "truncated file: need 4 bytes for version"});

  // Header.
  put("bad_magic", 0, uint32_t{0x4c4d4747}, "bad magic 0x4c4d4747", 0);
  put("version_0", 4, uint32_t{0}, "unsupported GGUF version 0", 4);
  put("version_1", 4, uint32_t{1}, "unsupported GGUF version 1", 4);
  put("version_4", 4, uint32_t{4}, "unsupported GGUF version 4", 4);
  put("version_big_endian", 4, uint32_t{0x03000000}, "big-endian", 4);
  put("tensor_count_absurd", 8, uint64_t{1} << 60,
      "tensor count 1152921504606846976 is impossible", 8);
  put("tensor_count_max", 8, kU64Max, "tensor count", 8);
  put("kv_count_absurd", 16, uint64_t{1} << 40,
      "metadata count 1099511627776 is impossible", 16);
  put("kv_count_max", 16, kU64Max, "metadata count", 16);

  // Strings.
  const uint64_t arch = L.value_at.at("general.architecture");
  put("key_length_absurd", L.kv_at.at("m.flag"), uint64_t{1} << 62,
      "string length 4611686018427387904 of metadata key exceeds",
      L.kv_at.at("m.flag"));
  put("key_length_max", L.kv_at.at("m.flag"), kU64Max, "string length",
      L.kv_at.at("m.flag"));
  put("string_value_length_absurd", arch, uint64_t{1} << 62,
      "string length 4611686018427387904 of general.architecture exceeds",
      arch);
  put("string_value_length_one_past_eof", arch,
      uint64_t{base.bytes.size() - arch - 8 + 1}, "exceeds", arch);
  const uint64_t tokens = L.value_at.at("m.tokens");
  put("string_array_element_length_absurd", tokens + 12, uint64_t{1} << 62,
      "string length 4611686018427387904 of m.tokens exceeds", tokens + 12);
  put("tensor_name_length_absurd", ta.info_at, uint64_t{1} << 62,
      "string length 4611686018427387904 of tensor name exceeds", ta.info_at);

  // Arrays.
  const uint64_t f32s = L.value_at.at("m.f32s");
  const uint64_t bools = L.value_at.at("m.bools");
  const uint64_t nested = L.value_at.at("m.nested");
  put("numeric_array_length_absurd", f32s + 4, uint64_t{1} << 62,
      "array 'm.f32s' claims 4611686018427387904 elements of 4 bytes",
      f32s + 4);
  put("numeric_array_length_max", f32s + 4, kU64Max, "array 'm.f32s' claims",
      f32s + 4);
  put("bool_array_length_absurd", bools + 4, uint64_t{1} << 62,
      "array 'm.bools' claims", bools + 4);
  put("string_array_length_absurd", tokens + 4, uint64_t{1} << 62,
      "string array 'm.tokens' claims 4611686018427387904 elements",
      tokens + 4);
  put("string_array_length_max", tokens + 4, kU64Max,
      "string array 'm.tokens' claims", tokens + 4);
  put("nested_array_length_absurd", nested + 4, uint64_t{1} << 62,
      "nested array 'm.nested' claims", nested + 4);
  put("inner_array_length_absurd", nested + 16, uint64_t{1} << 62,
      "array 'm.nested' claims", nested + 16);
  put("unknown_array_elem_type", f32s, uint32_t{13},
      "unknown array element type 13 for key 'm.f32s'", f32s);
  put("unknown_array_elem_type_max", f32s, uint32_t{0xffffffff},
      "unknown array element type 4294967295", f32s);
  put("unknown_inner_array_elem_type", nested + 12, uint32_t{99},
      "unknown array element type 99 for key 'm.nested'", nested + 12);
  {
    TrackingGgufWriter w;
    w.AddRawArray("deep", GgufValueType::kArray, 1, NestedArrayPayload(10));
    GgufSample deep = w.Finish("deep");
    // Level 10 sits at depth 9, one past the limit of 8.
    const uint64_t at = deep.layout.value_at.at("deep") + 12 * 9;
    out.push_back({"array_nesting_too_deep", std::move(deep.bytes), at,
                   "arrays of 'deep' nest deeper than 8 levels"});
  }

  // Value types and values.
  const uint64_t u32a = L.value_at.at("m.u32a");
  put("unknown_value_type", u32a - 4, uint32_t{13},
      "unknown value type 13 for key 'm.u32a'", u32a - 4);
  put("unknown_value_type_max", u32a - 4, uint32_t{0xffffffff},
      "unknown value type 4294967295", u32a - 4);
  put("bool_value_2", L.value_at.at("m.flag"), uint8_t{2},
      "bool value 2 of 'm.flag' is neither 0 nor 1", L.value_at.at("m.flag"));
  put("bool_value_255", L.value_at.at("m.flag"), uint8_t{255}, "bool value 255",
      L.value_at.at("m.flag"));
  put("bool_array_element_2", bools + 12 + 1, uint8_t{2},
      "bool element 1 of 'm.bools' is neither 0 nor 1", bools + 12 + 1);
  // "m.u32b" -> "m.u32a".
  put("duplicate_key", L.kv_at.at("m.u32b") + 8 + 5, 'a',
      "duplicate metadata key 'm.u32a'", L.kv_at.at("m.u32b"));

  // Tensor infos.
  for (uint32_t id : {4u, 5u, 31u, 36u, 40u, 1000u, 0xffffffffu}) {
    put(absl::StrCat("tensor_type_", id), tb.type_at, id,
        absl::StrCat("tensor 't.b' has unknown type id ", id), tb.type_at);
  }
  put("tensor_n_dims_0", tb.n_dims_at, uint32_t{0},
      "tensor 't.b' has 0 dimensions (1..4 allowed)", tb.n_dims_at);
  put("tensor_n_dims_5", tb.n_dims_at, uint32_t{5},
      "tensor 't.b' has 5 dimensions (1..4 allowed)", tb.n_dims_at);
  put("tensor_n_dims_max", tb.n_dims_at, uint32_t{0xffffffff},
      "dimensions (1..4 allowed)", tb.n_dims_at);
  put("tensor_dim0_zero", ta.dims_at, uint64_t{0},
      "tensor 't.a' dimension 0 is zero", ta.dims_at);
  put("tensor_dim1_zero", tb.dims_at + 8, uint64_t{0},
      "tensor 't.b' dimension 1 is zero", tb.dims_at + 8);
  // 32 * 2^59 = 2^64 wraps; 32 * 2^58 = 2^63 fits uint64 but not int64.
  put("tensor_elements_overflow_u64", tb.dims_at + 8, uint64_t{1} << 59,
      "tensor 't.b' element count overflows", tb.dims_at + 8);
  put("tensor_elements_overflow_i64", tb.dims_at + 8, uint64_t{1} << 58,
      "tensor 't.b' element count overflows", tb.dims_at + 8);
  put("tensor_dim_max", ta.dims_at, kU64Max,
      "tensor 't.a' element count overflows", ta.dims_at);
  put("tensor_ne0_not_block_multiple", tb.dims_at, uint64_t{33},
      "tensor 't.b' of type Q4_0 has ne0=33, not a multiple of its block "
      "size 32",
      tb.type_at);
  put("tensor_offset_unaligned", tb.offset_at, uint64_t{tb.rel_offset + 1},
      absl::StrCat("tensor 't.b' offset ", tb.rel_offset + 1,
                   " is not a multiple of the alignment 32"),
      tb.offset_at);
  put("tensor_past_eof", tb.offset_at, uint64_t{tb.rel_offset + 1024},
      "tensor 't.b' (36 bytes at data offset", tb.info_at);
  // The smallest aligned offset at which t.b's bytes no longer fit.
  put("tensor_next_aligned_offset_past_eof", tb.offset_at,
      uint64_t{(base.bytes.size() - L.data_start - tb.n_bytes + 1 + 31) / 32 *
               32},
      "lies outside the file", tb.info_at);
  put("tensor_offset_overflows", tb.offset_at, kU64Max - 31,
      "lies outside the file", tb.info_at);
  put("tensor_end_overflows", tb.offset_at, uint64_t{0} - 32 - L.data_start,
      "lies outside the file", tb.info_at);
  // "t.b" -> "t.a".
  put("duplicate_tensor_name", tb.info_at + 8 + 2, 'a',
      "duplicate tensor name 't.a'", tb.info_at);

  // general.alignment, from a file written with alignment 64: its record is
  // the first, at offset 24.
  const GgufSample a64 = BaseGguf(64);
  const uint64_t align_kv = a64.layout.kv_at.at("general.alignment");
  const uint64_t align_val = a64.layout.value_at.at("general.alignment");
  auto put64 = [&out, &a64](std::string name, uint64_t at, uint32_t v,
                            std::string phrase, uint64_t offset) {
    MalformedGguf m{std::move(name), a64.bytes, offset, std::move(phrase)};
    PatchLe(&m.bytes, at, v);
    out.push_back(std::move(m));
  };
  put64("alignment_0", align_val, 0,
        "general.alignment 0 is not a power of two", align_kv);
  put64("alignment_3", align_val, 3,
        "general.alignment 3 is not a power of two", align_kv);
  put64("alignment_96", align_val, 96,
        "general.alignment 96 is not a power of two", align_kv);
  put64("alignment_int32", align_val - 4,
        static_cast<uint32_t>(GgufValueType::kInt32),
        "general.alignment has type int32, expected uint32", align_kv);
  put64("alignment_float32", align_val - 4,
        static_cast<uint32_t>(GgufValueType::kFloat32),
        "general.alignment has type float32, expected uint32", align_kv);
  // 128 is valid but the tensor offsets written for 64 are not aligned to it.
  put64("alignment_raised_under_offsets", align_val, 128,
        "is not a multiple of the alignment 128",
        a64.layout.tensors.at("t.b").offset_at);
  {
    TrackingGgufWriter w;
    w.AddString("general.alignment", "64");
    GgufSample s = w.Finish("alignment_string");
    out.push_back({"alignment_string", std::move(s.bytes),
                   s.layout.kv_at.at("general.alignment"),
                   "general.alignment has type string, expected uint32"});
  }
  return out;
}

}  // namespace m40llm::testing
