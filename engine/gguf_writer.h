// GGUF v3 writer: collects metadata and tensors, then writes the file
// (header, tensor infos, aligned tensor data). Tensor data is either held in
// memory (AddTensor) or produced while the file is written
// (AddTensorInfo + WriteFileStreaming), so that multi-gigabyte models never
// sit in memory. Used by `m40llm mkmodel` and by tests.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/ggml_types.h"
#include "engine/gguf.h"

namespace m40llm {

// Receives one tensor's bytes while GgufWriter::WriteFileStreaming() runs.
class GgufTensorSink {
 public:
  GgufTensorSink(const GgufTensorSink&) = delete;
  GgufTensorSink& operator=(const GgufTensorSink&) = delete;

  // Bytes the tensor's data holds (without the alignment padding).
  uint64_t size() const { return size_; }

  // Writes `bytes` at `offset` within the tensor's data. Safe to call from
  // several threads at once; together the calls must cover [0, size())
  // exactly once (the writer checks the total). Fails on a range past
  // size() or an I/O error (naming the file).
  [[nodiscard]] absl::Status Write(uint64_t offset, std::string_view bytes);

 private:
  friend class GgufWriter;
  GgufTensorSink(int fd, std::string_view path, uint64_t file_offset, uint64_t size)
      : fd_(fd), path_(path), file_offset_(file_offset), size_(size) {}

  int fd_;
  std::string_view path_;  // for messages
  uint64_t file_offset_;   // where the tensor's data starts in the file
  uint64_t size_;
  std::atomic<uint64_t> written_{0};
};

// Produces the data of tensor `index` (in the order tensors were added) by
// calling sink.Write(); may fan the work out over threads, and must return
// only once every write has finished.
using GgufTensorFill = std::function<absl::Status(size_t index, GgufTensorSink& sink)>;

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
  // A tensor whose data WriteFileStreaming()'s fill callback supplies; the
  // same checks as AddTensor() except for the data size.
  absl::Status AddTensorInfo(std::string_view name, GgmlType type, std::vector<uint64_t> dims);

  // Tensors added so far; the next one added gets this index.
  size_t tensor_count() const { return tensors_.size(); }

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
  // alignment, then each tensor's data padded to the alignment. Tensors
  // added by AddTensorInfo() are written as zeros.
  std::string Serialize() const;
  // Serialize()'s bytes written to `path` (replaced if it exists). Fails if
  // a tensor was added by AddTensorInfo().
  absl::Status WriteFile(const std::string& path) const;
  // Writes the same layout as Serialize() to `path` (replaced if it exists)
  // without holding tensor data: the header first, then, tensor by tensor in
  // order, AddTensor() data as given and fill(index, sink) for each
  // AddTensorInfo() tensor. `fill` may be empty when there are none. On any
  // error a partial regular file is removed (`path` may also name a device
  // such as /dev/null, which is left alone).
  absl::Status WriteFileStreaming(const std::string& path, const GgufTensorFill& fill) const;

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
    uint64_t n_bytes;
    bool streamed;     // added by AddTensorInfo(): no data held
    std::string data;  // n_bytes bytes unless streamed
  };
  // Where everything goes: the one place offsets and padding are computed.
  struct Layout {
    std::string header;                  // up to the data section, padded
    std::vector<uint64_t> data_offsets;  // of each tensor, from the file start
    uint64_t file_size = 0;              // including the last tensor's padding
  };
  void Put(std::string_view key, GgufValueType type, std::string encoded);
  // Checks a new tensor's name and geometry; returns its data size in bytes.
  absl::StatusOr<uint64_t> CheckTensor(std::string_view name, GgmlType type,
                                       const std::vector<uint64_t>& dims) const;
  Layout ComputeLayout() const;

  uint32_t alignment_;
  std::vector<Kv> kv_;
  std::vector<Tensor> tensors_;
};

}  // namespace m40llm
