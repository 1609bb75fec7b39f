// GGUF v2/v3 reader over a memory-mapped file (or a caller-owned buffer).
//
// Open() validates the whole header up front: every metadata value, every
// tensor info, the alignment and every tensor's byte range. After a
// successful Open() all accessors are bounds-safe. Errors name the file, the
// byte offset and the problem.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/ggml_types.h"

namespace m40llm {

// Metadata value types (on-disk ids).
enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

std::string_view ValueTypeName(GgufValueType t);

// Size in bytes of a fixed-size scalar type, or 0 for string/array.
size_t ScalarSize(GgufValueType t);

// One metadata value. Strings are views into the mapped file. Arrays of
// scalars keep a pointer to their packed little-endian elements; arrays of
// strings keep views; nested arrays keep child values.
struct GgufValue {
  GgufValueType type = GgufValueType::kUint8;

  // Scalars, widened: integers (and bool) in `i`/`u`, floats in `f`.
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0;
  std::string_view str;

  // Arrays.
  GgufValueType elem_type = GgufValueType::kUint8;
  uint64_t count = 0;
  const uint8_t* raw = nullptr;           // packed scalar elements
  std::vector<std::string_view> strings;  // elem_type == kString
  std::vector<GgufValue> items;           // elem_type == kArray

  bool is_integer() const;
  bool is_float() const;
  // Numeric array element `k` (scalar arrays only; k < count), widened.
  double NumberAt(uint64_t k) const;
  int64_t IntAt(uint64_t k) const;
};

struct GgufKV {
  std::string_view key;
  GgufValue value;
};

// One tensor as described in the header. `dims[0]` is ne0, the innermost
// (contiguous) dimension; unused dims are 1.
struct GgufTensorInfo {
  std::string_view name;
  uint32_t n_dims = 0;
  uint64_t dims[4] = {1, 1, 1, 1};
  GgmlType type = GgmlType::kF32;
  uint64_t n_elements = 0;
  uint64_t n_bytes = 0;
  uint64_t offset = 0;       // absolute offset in the file
  uint64_t header_pos = 0;   // where its info record starts, for messages

  uint64_t rows() const { return n_elements / dims[0]; }
};

class GgufFile {
 public:
  // Maps and validates `path`.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);

  // Validates a buffer the caller keeps alive; `name` is used in messages.
  static absl::StatusOr<std::unique_ptr<GgufFile>> FromBuffer(
      std::string name, const uint8_t* data, size_t size);

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  uint64_t size() const { return size_; }

  const std::vector<GgufKV>& metadata() const { return kv_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }

  const GgufValue* Find(std::string_view key) const;
  const GgufTensorInfo* FindTensor(std::string_view name) const;

  // Typed getters; errors name the file and key (missing or wrong type).
  // Integer getters accept any integer type whose value fits.
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<uint64_t> GetUint(std::string_view key) const;
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;
  absl::StatusOr<double> GetFloat(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;

  // The tensor's bytes (validated to lie inside the file).
  std::span<const uint8_t> TensorData(const GgufTensorInfo& t) const {
    return {base_ + t.offset, static_cast<size_t>(t.n_bytes)};
  }

 private:
  GgufFile() = default;
  absl::Status Parse();

  std::string path_;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  void* map_ = nullptr;  // non-null when we own an mmap
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<GgufKV> kv_;
  std::vector<GgufTensorInfo> tensors_;
};

}  // namespace m40llm
