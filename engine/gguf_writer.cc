// GGUF v3 writer: every header field is appended little-endian to a byte
// string; the layout mirrors what engine/gguf.cc reads back. Files are
// written with pwrite at offsets from one ComputeLayout(), so that streamed
// tensors may be written in any order and from several threads.
#include "engine/gguf_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/status.h"

namespace m40llm {

static_assert(std::endian::native == std::endian::little,
              "the GGUF writer assumes a little-endian host");

namespace {

constexpr uint32_t kDefaultAlignment = 32;
constexpr uint32_t kVersion = 3;
constexpr size_t kMaxDims = 4;

template <typename T>
void Append(std::string* out, T v) {
  out->append(GgufWriter::EncodeScalar(v));
}

void AppendString(std::string* out, std::string_view s) {
  Append<uint64_t>(out, s.size());
  out->append(s);
}

// Writes all of `bytes` at `offset`, resuming after short writes.
absl::Status PwriteAll(int fd, std::string_view path, std::string_view bytes, uint64_t offset) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n =
        ::pwrite(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::InternalError(absl::StrCat(Sv(path), ": write of ", bytes.size(),
                                              " bytes at offset ", offset, " failed after ", done,
                                              ": ", n < 0 ? std::strerror(errno) : "no progress"));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

bool ValidAlignment(uint32_t a) { return a != 0 && (a & (a - 1)) == 0; }

// Bytes needed to bring `n` up to a multiple of `align` (an invalid alignment
// pads nothing, see the constructor's comment).
uint64_t PadTo(uint64_t n, uint32_t align) {
  if (!ValidAlignment(align)) return 0;
  return (align - n % align) % align;
}

// Packs `count` elements of a scalar array: elem type, count, raw elements.
std::string ScalarArray(GgufValueType elem_type, const void* data,
                        uint64_t count, size_t elem_size) {
  std::string out;
  Append<uint32_t>(&out, static_cast<uint32_t>(elem_type));
  Append<uint64_t>(&out, count);
  out.append(static_cast<const char*>(data), count * elem_size);
  return out;
}

}  // namespace

GgufWriter::GgufWriter(uint32_t alignment) : alignment_(alignment) {
  if (alignment_ != kDefaultAlignment) {
    AddUint32("general.alignment", alignment_);
  }
}

std::string GgufWriter::EncodeString(std::string_view s) {
  std::string out;
  AppendString(&out, s);
  return out;
}

std::string GgufWriter::EncodeArray(GgufValueType elem_type, uint64_t count,
                                    std::string_view encoded_elements) {
  std::string out;
  Append<uint32_t>(&out, static_cast<uint32_t>(elem_type));
  Append<uint64_t>(&out, count);
  out.append(encoded_elements);
  return out;
}

void GgufWriter::Put(std::string_view key, GgufValueType type,
                     std::string encoded) {
  for (Kv& kv : kv_) {
    if (kv.key == key) {
      kv.type = type;
      kv.encoded = std::move(encoded);
      return;
    }
  }
  kv_.push_back(Kv{std::string(key), type, std::move(encoded)});
}

void GgufWriter::AddUint8(std::string_view key, uint8_t v) {
  Put(key, GgufValueType::kUint8, EncodeScalar(v));
}
void GgufWriter::AddInt8(std::string_view key, int8_t v) {
  Put(key, GgufValueType::kInt8, EncodeScalar(v));
}
void GgufWriter::AddUint16(std::string_view key, uint16_t v) {
  Put(key, GgufValueType::kUint16, EncodeScalar(v));
}
void GgufWriter::AddInt16(std::string_view key, int16_t v) {
  Put(key, GgufValueType::kInt16, EncodeScalar(v));
}
void GgufWriter::AddUint32(std::string_view key, uint32_t v) {
  Put(key, GgufValueType::kUint32, EncodeScalar(v));
}
void GgufWriter::AddInt32(std::string_view key, int32_t v) {
  Put(key, GgufValueType::kInt32, EncodeScalar(v));
}
void GgufWriter::AddUint64(std::string_view key, uint64_t v) {
  Put(key, GgufValueType::kUint64, EncodeScalar(v));
}
void GgufWriter::AddInt64(std::string_view key, int64_t v) {
  Put(key, GgufValueType::kInt64, EncodeScalar(v));
}
void GgufWriter::AddFloat32(std::string_view key, float v) {
  Put(key, GgufValueType::kFloat32, EncodeScalar(v));
}
void GgufWriter::AddFloat64(std::string_view key, double v) {
  Put(key, GgufValueType::kFloat64, EncodeScalar(v));
}
void GgufWriter::AddBool(std::string_view key, bool v) {
  // On disk a bool is one byte holding exactly 0 or 1.
  Put(key, GgufValueType::kBool, EncodeScalar<uint8_t>(v ? 1 : 0));
}
void GgufWriter::AddString(std::string_view key, std::string_view v) {
  Put(key, GgufValueType::kString, EncodeString(v));
}

void GgufWriter::AddStringArray(std::string_view key,
                                const std::vector<std::string>& v) {
  std::string elems;
  for (const std::string& s : v) AppendString(&elems, s);
  Put(key, GgufValueType::kArray,
      EncodeArray(GgufValueType::kString, v.size(), elems));
}

void GgufWriter::AddFloat32Array(std::string_view key,
                                 std::span<const float> v) {
  Put(key, GgufValueType::kArray,
      ScalarArray(GgufValueType::kFloat32, v.data(), v.size(), sizeof(float)));
}

void GgufWriter::AddInt32Array(std::string_view key,
                               std::span<const int32_t> v) {
  Put(key, GgufValueType::kArray,
      ScalarArray(GgufValueType::kInt32, v.data(), v.size(), sizeof(int32_t)));
}

void GgufWriter::AddRawArray(std::string_view key, GgufValueType elem_type,
                             uint64_t count, std::string encoded_elements) {
  Put(key, GgufValueType::kArray,
      EncodeArray(elem_type, count, encoded_elements));
}

absl::StatusOr<uint64_t> GgufWriter::CheckTensor(std::string_view name, GgmlType type,
                                                 const std::vector<uint64_t>& dims) const {
  const auto fail = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("GgufWriter: tensor '", Sv(name), "': ", Sv(why)));
  };
  if (!ValidAlignment(alignment_)) {
    return fail(
        absl::StrCat("alignment ", alignment_, " is not a power of two"));
  }
  for (const Tensor& t : tensors_) {
    if (t.name == name) return fail("duplicate tensor name");
  }
  const auto traits = TypeTraits(static_cast<uint32_t>(type));
  if (!traits) {
    return fail(
        absl::StrCat("unknown type ", TypeName(static_cast<uint32_t>(type))));
  }
  if (dims.empty() || dims.size() > kMaxDims) {
    return fail(absl::StrCat(dims.size(), " dimensions (1..4 allowed)"));
  }
  uint64_t n = 1;
  for (size_t d = 0; d < dims.size(); ++d) {
    if (dims[d] == 0) return fail(absl::StrCat("dimension ", d, " is zero"));
    if (__builtin_mul_overflow(n, dims[d], &n) ||
        n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return fail("element count overflows");
    }
  }
  if (dims[0] % traits->block_elems != 0) {
    return fail(absl::StrCat("ne0=", dims[0], " is not a multiple of the ",
                             Sv(traits->name), " block size ",
                             traits->block_elems));
  }
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(n / traits->block_elems, traits->block_bytes, &bytes)) {
    return fail("byte size overflows");
  }
  return bytes;
}

absl::Status GgufWriter::AddTensor(std::string_view name, GgmlType type, std::vector<uint64_t> dims,
                                   std::string data) {
  ASSIGN_OR_RETURN(const uint64_t want, CheckTensor(name, type, dims));
  if (data.size() != want) {
    const auto traits = TypeTraits(static_cast<uint32_t>(type));
    return absl::InvalidArgumentError(absl::StrCat(
        "GgufWriter: tensor '", Sv(name), "': data has ", data.size(), " bytes, ", Sv(traits->name),
        " of ", want / traits->block_bytes * traits->block_elems, " elements needs ", want));
  }
  tensors_.push_back(Tensor{std::string(name), type, std::move(dims), want,
                            /*streamed=*/false, std::move(data)});
  return absl::OkStatus();
}

absl::Status GgufWriter::AddTensorInfo(std::string_view name, GgmlType type,
                                       std::vector<uint64_t> dims) {
  ASSIGN_OR_RETURN(const uint64_t n_bytes, CheckTensor(name, type, dims));
  tensors_.push_back(Tensor{std::string(name), type, std::move(dims), n_bytes,
                            /*streamed=*/true, std::string()});
  return absl::OkStatus();
}

GgufWriter::Layout GgufWriter::ComputeLayout() const {
  Layout l;
  std::string& out = l.header;
  out.append("GGUF", 4);
  Append<uint32_t>(&out, kVersion);
  Append<uint64_t>(&out, tensors_.size());
  Append<uint64_t>(&out, kv_.size());
  for (const Kv& kv : kv_) {
    AppendString(&out, kv.key);
    Append<uint32_t>(&out, static_cast<uint32_t>(kv.type));
    out.append(kv.encoded);
  }
  // Offsets in the file are relative to the data section; each tensor
  // starts aligned.
  uint64_t rel = 0;
  std::vector<uint64_t> rels;
  rels.reserve(tensors_.size());
  for (const Tensor& t : tensors_) {
    AppendString(&out, t.name);
    Append<uint32_t>(&out, static_cast<uint32_t>(t.dims.size()));
    for (uint64_t d : t.dims) Append<uint64_t>(&out, d);
    Append<uint32_t>(&out, static_cast<uint32_t>(t.type));
    Append<uint64_t>(&out, rel);
    rels.push_back(rel);
    rel += t.n_bytes + PadTo(t.n_bytes, alignment_);
  }
  out.append(PadTo(out.size(), alignment_), '\0');
  l.data_offsets.reserve(rels.size());
  for (uint64_t r : rels) l.data_offsets.push_back(out.size() + r);
  l.file_size = out.size() + rel;
  return l;
}

std::string GgufWriter::Serialize() const {
  Layout l = ComputeLayout();
  std::string out = std::move(l.header);
  for (const Tensor& t : tensors_) {
    if (t.streamed) {
      out.append(t.n_bytes, '\0');
    } else {
      out.append(t.data);
    }
    out.append(PadTo(t.n_bytes, alignment_), '\0');
  }
  return out;
}

absl::Status GgufWriter::WriteFile(const std::string& path) const {
  return WriteFileStreaming(path, nullptr);
}

absl::Status GgufTensorSink::Write(uint64_t offset, std::string_view bytes) {
  if (offset > size_ || bytes.size() > size_ - offset) {
    return absl::OutOfRangeError(absl::StrCat(Sv(path_), ": tensor write of ", bytes.size(),
                                              " bytes at ", offset, " runs past its ", size_,
                                              " bytes"));
  }
  RETURN_IF_ERROR(PwriteAll(fd_, path_, bytes, file_offset_ + offset));
  written_.fetch_add(bytes.size(), std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::Status GgufWriter::WriteFileStreaming(const std::string& path,
                                            const GgufTensorFill& fill) const {
  if (!ValidAlignment(alignment_)) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": alignment ", alignment_, " is not a power of two"));
  }
  if (!fill) {
    for (const Tensor& t : tensors_) {
      if (t.streamed) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": tensor '", t.name, "' has no data and no fill callback was given"));
      }
    }
  }
  const Layout l = ComputeLayout();
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat(path, ": cannot create: ", std::strerror(errno)));
  }
  // Only a regular file is sized up front and removed on failure: `path`
  // may also be a device such as /dev/null.
  struct stat st;
  const bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  const absl::Status s = [&]() -> absl::Status {
    // Sizing the file first leaves every padding gap reading as zeros.
    if (regular && ::ftruncate(fd, static_cast<off_t>(l.file_size)) != 0) {
      return absl::InternalError(
          absl::StrCat(path, ": cannot size to ", l.file_size, " bytes: ", std::strerror(errno)));
    }
    RETURN_IF_ERROR(PwriteAll(fd, path, l.header, 0));
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const Tensor& t = tensors_[i];
      if (!t.streamed) {
        RETURN_IF_ERROR(PwriteAll(fd, path, t.data, l.data_offsets[i]));
        continue;
      }
      GgufTensorSink sink(fd, path, l.data_offsets[i], t.n_bytes);
      RETURN_IF_ERROR(fill(i, sink));
      const uint64_t written = sink.written_.load();
      if (written != t.n_bytes) {
        return absl::InternalError(absl::StrCat(path, ": tensor '", t.name, "' got ", written,
                                                " bytes, it needs ", t.n_bytes));
      }
    }
    return absl::OkStatus();
  }();
  const int close_rc = ::close(fd);
  const int close_errno = errno;
  if (s.ok() && close_rc == 0) return absl::OkStatus();
  if (regular) ::unlink(path.c_str());
  if (!s.ok()) return s;
  return absl::InternalError(absl::StrCat(path, ": close failed: ", std::strerror(close_errno)));
}

}  // namespace m40llm
