// GGUF v3 writer: builds a file in memory (metadata, tensor infos, aligned
// tensor data) and serialises it. Used by `m40llm mkmodel` and by tests.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "engine/ggml_types.h"
#include "engine/gguf.h"

namespace m40llm {

class GgufWriter {
 public:
  explicit GgufWriter(uint32_t alignment = 32);

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
  void AddRawArray(std::string_view key, GgufValueType elem_type, uint64_t count,
                   std::string encoded_elements);

  // A tensor; `dims[0]` is ne0 (innermost). `data` must hold exactly the
  // type's byte size for these dims.
  absl::Status AddTensor(std::string_view name, GgmlType type,
                         std::vector<uint64_t> dims, std::string data);

  // The whole file.
  std::string Serialize() const;
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
