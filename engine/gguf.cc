// GGUF reader: a bounds-checked cursor walks the header once and validates
// everything a later accessor could touch.
#include "engine/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/status.h"

namespace m40llm {

static_assert(std::endian::native == std::endian::little,
              "the GGUF reader assumes a little-endian host");

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as little-endian u32
constexpr uint32_t kMaxDims = 4;
constexpr int kMaxArrayDepth = 8;

// Smallest possible encodings, used to reject absurd counts before looping.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;       // empty key, type, 1-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;  // empty name, 1 dim
constexpr uint64_t kMinArrayBytes = 4 + 8;        // elem type + count

// Reads little-endian fields with bounds checks; every failure names the
// offset at which the read was attempted.
class Cursor {
 public:
  Cursor(const std::string& file, const uint8_t* base, uint64_t size)
      : file_(file), base_(base), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  absl::Status Error(uint64_t at, std::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: offset %d: %s", file_, at, what));
  }

  template <typename T>
  absl::Status Read(T* out, std::string_view what) {
    if (remaining() < sizeof(T)) {
      return Error(pos_, absl::StrCat("truncated file: need ", sizeof(T),
                                      " bytes for ", Sv(what), ", ", remaining(),
                                      " left"));
    }
    std::memcpy(out, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return absl::OkStatus();
  }

  absl::Status ReadString(std::string_view* out, std::string_view what) {
    const uint64_t at = pos_;
    uint64_t len = 0;
    RETURN_IF_ERROR(Read(&len, what));
    if (len > remaining()) {
      return Error(at, absl::StrCat("string length ", len, " of ", Sv(what),
                                    " exceeds the ", remaining(),
                                    " bytes left in the file"));
    }
    *out = std::string_view(reinterpret_cast<const char*>(base_ + pos_), len);
    pos_ += len;
    return absl::OkStatus();
  }

  absl::Status Skip(uint64_t n, uint64_t at, std::string_view what) {
    if (n > remaining()) {
      return Error(at, absl::StrCat("truncated file: ", Sv(what), " needs ", n,
                                    " bytes, ", remaining(), " left"));
    }
    pos_ += n;
    return absl::OkStatus();
  }

  const uint8_t* here() const { return base_ + pos_; }

 private:
  const std::string& file_;
  const uint8_t* base_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

bool ValidValueType(uint32_t t) { return t <= 12; }

absl::Status ReadValue(Cursor& c, GgufValueType type, GgufValue* v, int depth,
                       std::string_view key);

absl::Status ReadScalar(Cursor& c, GgufValueType type, GgufValue* v,
                        std::string_view key) {
  v->type = type;
  switch (type) {
    case GgufValueType::kUint8: {
      uint8_t x = 0;
      RETURN_IF_ERROR(c.Read(&x, key));
      v->u = x; v->i = x; v->f = x;
      return absl::OkStatus();
    }
    case GgufValueType::kInt8: {
      int8_t x = 0;
      RETURN_IF_ERROR(c.Read(&x, key));
      v->i = x; v->u = static_cast<uint64_t>(x); v->f = x;
      return absl::OkStatus();
    }
    case GgufValueType::kUint16: {
      uint16_t x = 0;
      RETURN_IF_ERROR(c.Read(&x, key));
      v->u = x; v->i = x; v->f = x;
      return absl::OkStatus();
    }
    case GgufValueType::kInt16: {
      int16_t x = 0;
      RETURN_IF_ERROR(c.Read(&x, key));
      v->i = x; v->u = static_cast<uint64_t>(x); v->f = x;
      return absl::OkStatus();
    }
    case GgufValueType::kUint32: {
      uint32_t x = 0;
      RETURN_IF_ERROR(c.Read(&x, key));
      v->u = x; v->i = x; v->f = x;
      return absl::OkStatus();
    }
    case GgufValueType::kInt32: {
      int32_t x = 0;
      RETURN_IF_ERROR(c.Read(&x, key));
      v->i = x; v->u = static_cast<uint64_t>(x); v->f = x;
      return absl::OkStatus();
    }
    case GgufValueType::kUint64: {
      uint64_t x = 0;
      RETURN_IF_ERROR(c.Read(&x, key));
      v->u = x; v->i = static_cast<int64_t>(x); v->f = static_cast<double>(x);
      return absl::OkStatus();
    }
    case GgufValueType::kInt64: {
      int64_t x = 0;
      RETURN_IF_ERROR(c.Read(&x, key));
      v->i = x; v->u = static_cast<uint64_t>(x); v->f = static_cast<double>(x);
      return absl::OkStatus();
    }
    case GgufValueType::kFloat32: {
      float x = 0;
      RETURN_IF_ERROR(c.Read(&x, key));
      v->f = x;
      return absl::OkStatus();
    }
    case GgufValueType::kFloat64: {
      double x = 0;
      RETURN_IF_ERROR(c.Read(&x, key));
      v->f = x;
      return absl::OkStatus();
    }
    case GgufValueType::kBool: {
      const uint64_t at = c.pos();
      uint8_t x = 0;
      RETURN_IF_ERROR(c.Read(&x, key));
      if (x > 1) {
        return c.Error(at, absl::StrCat("bool value ", int{x}, " of '", Sv(key),
                                        "' is neither 0 nor 1"));
      }
      v->u = x; v->i = x; v->f = x;
      return absl::OkStatus();
    }
    case GgufValueType::kString:
      return c.ReadString(&v->str, key);
    case GgufValueType::kArray:
      break;
  }
  return c.Error(c.pos(), "internal: not a scalar type");
}

absl::Status ReadArray(Cursor& c, GgufValue* v, int depth, std::string_view key) {
  v->type = GgufValueType::kArray;
  const uint64_t at = c.pos();
  if (depth > kMaxArrayDepth) {
    return c.Error(at, absl::StrCat("arrays of '", Sv(key), "' nest deeper than ",
                                    kMaxArrayDepth, " levels"));
  }
  uint32_t et = 0;
  RETURN_IF_ERROR(c.Read(&et, "array element type"));
  if (!ValidValueType(et)) {
    return c.Error(at, absl::StrCat("unknown array element type ", et,
                                    " for key '", Sv(key), "'"));
  }
  v->elem_type = static_cast<GgufValueType>(et);
  const uint64_t count_at = c.pos();
  RETURN_IF_ERROR(c.Read(&v->count, "array length"));
  const size_t esz = ScalarSize(v->elem_type);
  if (esz != 0) {
    if (v->count > c.remaining() / esz) {
      return c.Error(count_at, absl::StrCat("array '", Sv(key), "' claims ",
                                            v->count, " elements of ", esz,
                                            " bytes; only ", c.remaining(),
                                            " bytes left"));
    }
    v->raw = c.here();
    if (v->elem_type == GgufValueType::kBool) {
      for (uint64_t k = 0; k < v->count; ++k) {
        if (v->raw[k] > 1) {
          return c.Error(c.pos() + k, absl::StrCat("bool element ", k, " of '",
                                                   Sv(key), "' is neither 0 nor 1"));
        }
      }
    }
    return c.Skip(v->count * esz, count_at, "array data");
  }
  if (v->elem_type == GgufValueType::kString) {
    if (v->count > c.remaining() / 8) {
      return c.Error(count_at, absl::StrCat("string array '", Sv(key), "' claims ",
                                            v->count, " elements; only ",
                                            c.remaining(), " bytes left"));
    }
    v->strings.resize(v->count);
    for (uint64_t k = 0; k < v->count; ++k) {
      RETURN_IF_ERROR(c.ReadString(&v->strings[k], key));
    }
    return absl::OkStatus();
  }
  // Nested arrays.
  if (v->count > c.remaining() / kMinArrayBytes) {
    return c.Error(count_at, absl::StrCat("nested array '", Sv(key), "' claims ",
                                          v->count, " elements; only ",
                                          c.remaining(), " bytes left"));
  }
  // Grow as elements parse, not by the claimed count: a GgufValue is ~10x
  // the 12 bytes an empty nested array needs on disk, so a forged count in a
  // large file must not cost memory before the bytes behind it are seen.
  for (uint64_t k = 0; k < v->count; ++k) {
    RETURN_IF_ERROR(ReadArray(c, &v->items.emplace_back(), depth + 1, key));
  }
  return absl::OkStatus();
}

absl::Status ReadValue(Cursor& c, GgufValueType type, GgufValue* v, int depth,
                       std::string_view key) {
  if (type == GgufValueType::kArray) return ReadArray(c, v, depth, key);
  return ReadScalar(c, type, v, key);
}

// a * b with overflow detection.
bool MulOverflow(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}
bool AddOverflow(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_add_overflow(a, b, out);
}

}  // namespace

std::string_view ValueTypeName(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8: return "uint8";
    case GgufValueType::kInt8: return "int8";
    case GgufValueType::kUint16: return "uint16";
    case GgufValueType::kInt16: return "int16";
    case GgufValueType::kUint32: return "uint32";
    case GgufValueType::kInt32: return "int32";
    case GgufValueType::kFloat32: return "float32";
    case GgufValueType::kBool: return "bool";
    case GgufValueType::kString: return "string";
    case GgufValueType::kArray: return "array";
    case GgufValueType::kUint64: return "uint64";
    case GgufValueType::kInt64: return "int64";
    case GgufValueType::kFloat64: return "float64";
  }
  return "unknown";
}

size_t ScalarSize(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool: return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16: return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32: return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64: return 8;
    case GgufValueType::kString:
    case GgufValueType::kArray: return 0;
  }
  return 0;
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kUint64:
    case GgufValueType::kInt64: return true;
    default: return false;
  }
}

bool GgufValue::is_float() const {
  return type == GgufValueType::kFloat32 || type == GgufValueType::kFloat64;
}

namespace {
template <typename T>
T LoadAt(const uint8_t* p, uint64_t k) {
  T x;
  std::memcpy(&x, p + k * sizeof(T), sizeof(T));
  return x;
}

// Float to int64 without the undefined behaviour of an out-of-range cast:
// NaN gives 0, values beyond the range clamp to its ends.
int64_t SaturatingInt(double x) {
  if (std::isnan(x)) return 0;
  // 2^63 is exactly representable; every double below it converts.
  if (x >= 9223372036854775808.0) return std::numeric_limits<int64_t>::max();
  if (x <= -9223372036854775808.0) return std::numeric_limits<int64_t>::min();
  return static_cast<int64_t>(x);
}
}  // namespace

double GgufValue::NumberAt(uint64_t k) const {
  switch (elem_type) {
    case GgufValueType::kFloat32: return LoadAt<float>(raw, k);
    case GgufValueType::kFloat64: return LoadAt<double>(raw, k);
    case GgufValueType::kUint64: return static_cast<double>(LoadAt<uint64_t>(raw, k));
    default: return static_cast<double>(IntAt(k));
  }
}

int64_t GgufValue::IntAt(uint64_t k) const {
  switch (elem_type) {
    case GgufValueType::kUint8:
    case GgufValueType::kBool: return LoadAt<uint8_t>(raw, k);
    case GgufValueType::kInt8: return LoadAt<int8_t>(raw, k);
    case GgufValueType::kUint16: return LoadAt<uint16_t>(raw, k);
    case GgufValueType::kInt16: return LoadAt<int16_t>(raw, k);
    case GgufValueType::kUint32: return LoadAt<uint32_t>(raw, k);
    case GgufValueType::kInt32: return LoadAt<int32_t>(raw, k);
    case GgufValueType::kUint64: return static_cast<int64_t>(LoadAt<uint64_t>(raw, k));
    case GgufValueType::kInt64: return LoadAt<int64_t>(raw, k);
    case GgufValueType::kFloat32: return SaturatingInt(LoadAt<float>(raw, k));
    case GgufValueType::kFloat64: return SaturatingInt(LoadAt<double>(raw, k));
    default: return 0;
  }
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(
        absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::InternalError(absl::StrCat(path, ": stat failed: ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  auto file = std::unique_ptr<GgufFile>(new GgufFile());
  file->path_ = path;
  file->size_ = static_cast<uint64_t>(st.st_size);
  if (file->size_ > 0) {
    void* m = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return absl::InternalError(absl::StrCat(path, ": mmap failed: ", std::strerror(err)));
    }
    file->map_ = m;
    file->base_ = static_cast<const uint8_t*>(m);
  }
  ::close(fd);
  RETURN_IF_ERROR(file->Parse());
  return file;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::FromBuffer(
    std::string name, const uint8_t* data, size_t size) {
  auto file = std::unique_ptr<GgufFile>(new GgufFile());
  file->path_ = std::move(name);
  file->base_ = data;
  file->size_ = size;
  RETURN_IF_ERROR(file->Parse());
  return file;
}

GgufFile::~GgufFile() {
  if (map_ != nullptr) ::munmap(map_, size_);
}

absl::Status GgufFile::Parse() {
  Cursor c(path_, base_, size_);
  uint32_t magic = 0;
  RETURN_IF_ERROR(c.Read(&magic, "magic"));
  if (magic != kMagic) {
    return c.Error(0, absl::StrFormat("bad magic 0x%08x: not a GGUF file", magic));
  }
  RETURN_IF_ERROR(c.Read(&version_, "version"));
  if (version_ == 0x02000000u || version_ == 0x03000000u) {
    return c.Error(4, "big-endian GGUF files are not supported");
  }
  if (version_ != 2 && version_ != 3) {
    return c.Error(4, absl::StrCat("unsupported GGUF version ", version_,
                                   " (supported: 2, 3)"));
  }
  uint64_t n_tensors = 0, n_kv = 0;
  const uint64_t nt_at = c.pos();
  RETURN_IF_ERROR(c.Read(&n_tensors, "tensor count"));
  const uint64_t nkv_at = c.pos();
  RETURN_IF_ERROR(c.Read(&n_kv, "metadata count"));
  if (n_kv > c.remaining() / kMinKvBytes) {
    return c.Error(nkv_at, absl::StrCat("metadata count ", n_kv,
                                        " is impossible in a file of ", size_,
                                        " bytes"));
  }
  if (n_tensors > c.remaining() / kMinTensorInfoBytes) {
    return c.Error(nt_at, absl::StrCat("tensor count ", n_tensors,
                                       " is impossible in a file of ", size_,
                                       " bytes"));
  }

  // kv_ and tensors_ grow as records parse (see ReadArray for why).
  std::unordered_set<std::string_view> keys;
  uint64_t alignment_at = 0;  // where the general.alignment record starts
  for (uint64_t k = 0; k < n_kv; ++k) {
    const uint64_t at = c.pos();
    GgufKV& kv = kv_.emplace_back();
    RETURN_IF_ERROR(c.ReadString(&kv.key, "metadata key"));
    if (!keys.insert(kv.key).second) {
      return c.Error(at, absl::StrCat("duplicate metadata key '", Sv(kv.key), "'"));
    }
    if (kv.key == "general.alignment") alignment_at = at;
    const uint64_t type_at = c.pos();
    uint32_t t = 0;
    RETURN_IF_ERROR(c.Read(&t, "value type"));
    if (!ValidValueType(t)) {
      return c.Error(type_at, absl::StrCat("unknown value type ", t, " for key '",
                                           Sv(kv.key), "'"));
    }
    RETURN_IF_ERROR(ReadValue(c, static_cast<GgufValueType>(t), &kv.value, 0, kv.key));
  }

  if (const GgufValue* a = Find("general.alignment")) {
    if (a->type != GgufValueType::kUint32) {
      return c.Error(alignment_at, absl::StrCat("general.alignment has type ",
                                     Sv(ValueTypeName(a->type)), ", expected uint32"));
    }
    if (a->u == 0 || (a->u & (a->u - 1)) != 0) {
      return c.Error(alignment_at, absl::StrCat("general.alignment ", a->u,
                                     " is not a power of two"));
    }
    alignment_ = a->u;
  }

  std::unordered_set<std::string_view> names;
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo& ti = tensors_.emplace_back();
    ti.header_pos = c.pos();
    RETURN_IF_ERROR(c.ReadString(&ti.name, "tensor name"));
    if (!names.insert(ti.name).second) {
      return c.Error(ti.header_pos, absl::StrCat("duplicate tensor name '", Sv(ti.name), "'"));
    }
    const uint64_t nd_at = c.pos();
    RETURN_IF_ERROR(c.Read(&ti.n_dims, "tensor dimension count"));
    if (ti.n_dims == 0 || ti.n_dims > kMaxDims) {
      return c.Error(nd_at, absl::StrCat("tensor '", Sv(ti.name), "' has ", ti.n_dims,
                                         " dimensions (1..4 allowed)"));
    }
    uint64_t n = 1;
    for (uint32_t d = 0; d < ti.n_dims; ++d) {
      const uint64_t d_at = c.pos();
      RETURN_IF_ERROR(c.Read(&ti.dims[d], "tensor dimension"));
      if (ti.dims[d] == 0) {
        return c.Error(d_at, absl::StrCat("tensor '", Sv(ti.name), "' dimension ", d,
                                          " is zero"));
      }
      if (MulOverflow(n, ti.dims[d], &n) ||
          n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return c.Error(d_at, absl::StrCat("tensor '", Sv(ti.name),
                                          "' element count overflows"));
      }
    }
    ti.n_elements = n;
    const uint64_t type_at = c.pos();
    uint32_t type_id = 0;
    RETURN_IF_ERROR(c.Read(&type_id, "tensor type"));
    auto traits = TypeTraits(type_id);
    if (!traits) {
      return c.Error(type_at, absl::StrCat("tensor '", Sv(ti.name), "' has unknown type id ",
                                           type_id));
    }
    ti.type = static_cast<GgmlType>(type_id);
    if (ti.dims[0] % traits->block_elems != 0) {
      return c.Error(type_at, absl::StrCat("tensor '", Sv(ti.name), "' of type ",
                                           Sv(traits->name), " has ne0=", ti.dims[0],
                                           ", not a multiple of its block size ",
                                           traits->block_elems));
    }
    if (MulOverflow(n / traits->block_elems, traits->block_bytes, &ti.n_bytes)) {
      return c.Error(type_at, absl::StrCat("tensor '", Sv(ti.name), "' byte size overflows"));
    }
    const uint64_t off_at = c.pos();
    RETURN_IF_ERROR(c.Read(&ti.offset, "tensor offset"));
    if (ti.offset % alignment_ != 0) {
      return c.Error(off_at, absl::StrCat("tensor '", Sv(ti.name), "' offset ", ti.offset,
                                          " is not a multiple of the alignment ",
                                          alignment_));
    }
  }

  // The data section starts at the next multiple of the alignment.
  uint64_t data = c.pos();
  const uint64_t pad = (alignment_ - data % alignment_) % alignment_;
  if (AddOverflow(data, pad, &data_offset_)) {
    return c.Error(c.pos(), "data section offset overflows");
  }
  if (n_tensors > 0 && data_offset_ > size_) {
    return c.Error(c.pos(), absl::StrCat("truncated file: the data section would start at ",
                                         data_offset_, " but the file has ", size_,
                                         " bytes"));
  }
  for (GgufTensorInfo& ti : tensors_) {
    uint64_t abs_off = 0, end = 0;
    if (AddOverflow(data_offset_, ti.offset, &abs_off) ||
        AddOverflow(abs_off, ti.n_bytes, &end) || end > size_) {
      return c.Error(ti.header_pos,
                     absl::StrCat("tensor '", Sv(ti.name), "' (", ti.n_bytes,
                                  " bytes at data offset ", ti.offset,
                                  ") lies outside the file of ", size_, " bytes"));
    }
    ti.offset = abs_off;
  }
  return absl::OkStatus();
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  for (const GgufKV& kv : kv_) {
    if (kv.key == key) return &kv.value;
  }
  return nullptr;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  for (const GgufTensorInfo& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

namespace {
absl::Status Missing(const std::string& path, std::string_view key) {
  return absl::NotFoundError(absl::StrCat(path, ": missing metadata key '", Sv(key), "'"));
}
absl::Status WrongType(const std::string& path, std::string_view key,
                       const GgufValue& v, std::string_view want) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": metadata key '", Sv(key),
                                                 "' has type ", Sv(ValueTypeName(v.type)),
                                                 ", expected ", Sv(want)));
}
}  // namespace

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (!v) return Missing(path_, key);
  if (v->type != GgufValueType::kString) return WrongType(path_, key, *v, "string");
  return std::string(v->str);
}

absl::StatusOr<uint64_t> GgufFile::GetUint(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (!v) return Missing(path_, key);
  if (!v->is_integer()) return WrongType(path_, key, *v, "an integer");
  const bool is_signed = v->type == GgufValueType::kInt8 || v->type == GgufValueType::kInt16 ||
                         v->type == GgufValueType::kInt32 || v->type == GgufValueType::kInt64;
  if (is_signed && v->i < 0) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": metadata key '", Sv(key),
                                                   "' is negative (", v->i, ")"));
  }
  return v->u;
}

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (!v) return Missing(path_, key);
  if (!v->is_integer()) return WrongType(path_, key, *v, "an integer");
  if (v->type == GgufValueType::kUint64 &&
      v->u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": metadata key '", Sv(key),
                                                   "' is out of range"));
  }
  return v->i;
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (!v) return Missing(path_, key);
  if (!v->is_float() && !v->is_integer()) return WrongType(path_, key, *v, "a number");
  return v->f;
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (!v) return Missing(path_, key);
  if (v->type != GgufValueType::kBool) return WrongType(path_, key, *v, "bool");
  return v->u != 0;
}

}  // namespace m40llm
