// GGUF v3 writer: builds a file in memory (metadata, tensor infos, aligned
// tensor data) and serialises it. Used by `m40llm mkmodel` and by tests.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "engine/ggml_types.h"
#include "engine/gguf.h"

namespace m40llm {

class GgufWriter {
 public:
  // `alignment` must be a power of two. When it is not 32 the writer adds
  // `general.alignment` (uint32) as the first metadata key itself; callers
  // must not add that key. With an invalid alignment AddTensor() and
  // WriteFile() fail, and Serialize() writes the value unpadded (a file the
  // reader rejects; useful only in tests).
  explicit GgufWriter(uint32_t alignment = 32);

  uint32_t alignment() const { return alignment_; }

  // Metadata, written in insertion order. Adding a key twice replaces it.
  void AddUint8(std::string_view key, uint8_t v);
  void AddInt8(std::string_view key, int8_t v);
  void AddUint16(std::string_view key, uint16_t v);
  void AddInt16(std::string_view key, int16_t v);
  void AddUint32(std::string_view key, uint32_t v);
  void AddInt32(std::string_view key, int32_t v);
  void AddUint64(std::string_view key, uint64_t v);
  void AddInt64(std::string_view key, int64_t v);
  void AddFloat32(std::string_view key, float v);
  void AddFloat64(std::string_view key, double v);
  void AddBool(std::string_view key, bool v);
  void AddString(std::string_view key, std::string_view v);
  void AddStringArray(std::string_view key, const std::vector<std::string>& v);
  void AddFloat32Array(std::string_view key, std::span<const float> v);
  void AddInt32Array(std::string_view key, std::span<const int32_t> v);
  // Any array: `elem_type` and the already-encoded elements (for nested
  // arrays, each element is `type(u32) count(u64) payload`).
  void AddRawArray(std::string_view key, GgufValueType elem_type,
                   uint64_t count, std::string encoded_elements);

  // A tensor; `dims[0]` is ne0 (innermost). `data` must hold exactly the
  // type's byte size for these dims. Fails on a duplicate name, 0 or more
  // than 4 dims, a zero dim, an element count that overflows, ne0 not a
  // multiple of the type's block size, or a wrong data size.
  absl::Status AddTensor(std::string_view name, GgmlType type,
                         std::vector<uint64_t> dims, std::string data);

  // Encoders for AddRawArray() payloads, all little-endian.
  // A scalar value (integer or floating point) as its raw bytes.
  template <typename T>
  static std::string EncodeScalar(T v) {
    static_assert(std::is_arithmetic_v<T>);
    std::string out(sizeof(T), '\0');
    std::memcpy(out.data(), &v, sizeof(T));
    return out;
  }
  // A string: uint64 length, then the bytes (may contain NULs).
  static std::string EncodeString(std::string_view s);
  // One nested-array element: uint32 elem type, uint64 count, payload.
  static std::string EncodeArray(GgufValueType elem_type, uint64_t count,
                                 std::string_view encoded_elements);

  // The whole file: header, metadata, tensor infos, padding to the
  // alignment, then each tensor's data padded to the alignment.
  std::string Serialize() const;
  // Serialize() written to `path` (replaced if it exists).
  absl::Status WriteFile(const std::string& path) const;

 private:
  struct Kv {
    std::string key;
    GgufValueType type;
    std::string encoded;  // value bytes after the type field
  };
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<uint64_t> dims;
    std::string data;
  };
  void Put(std::string_view key, GgufValueType type, std::string encoded);

  uint32_t alignment_;
  std::vector<Kv> kv_;
  std::vector<Tensor> tensors_;
};

}  // namespace m40llm
