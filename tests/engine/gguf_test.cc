// GGUF writer -> reader round trips (every metadata type, nested arrays,
// tensors of several types, custom alignment, v2 and vocab-only files), the
// streamed write path against the in-memory one, the writer's own
// validation, and the typed getters' errors.
#include "engine/gguf.h"

#include <sys/stat.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/ggml_types.h"
#include "engine/gguf_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/test_support.h"

namespace m40llm {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A parsed file together with the bytes it views.
struct Parsed {
  std::string bytes;
  std::unique_ptr<GgufFile> file;
};

absl::StatusOr<Parsed> ParseBytes(std::string bytes,
                                  const std::string& name = "mem.gguf") {
  Parsed p;
  p.bytes = std::move(bytes);
  auto f = GgufFile::FromBuffer(
      name, reinterpret_cast<const uint8_t*>(p.bytes.data()), p.bytes.size());
  if (!f.ok()) return f.status();
  p.file = std::move(*f);
  return p;
}

// Writes `w` and parses it back, failing the test on error.
Parsed RoundTrip(const GgufWriter& w) {
  auto p = ParseBytes(w.Serialize());
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) return {};
  return std::move(*p);
}

// Deterministic non-zero bytes for tensor data.
std::string Pattern(size_t n, uint8_t seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i)
    s[i] = static_cast<char>(seed + i * 31 + (i >> 8));
  return s;
}

std::string AsString(std::span<const uint8_t> s) {
  return std::string(reinterpret_cast<const char*>(s.data()), s.size());
}

// Little-endian appenders for hand-built files.
template <typename T>
void Put(std::string* out, T v) {
  out->append(GgufWriter::EncodeScalar(v));
}

TEST(GgufRoundTrip, AllScalarWidths) {
  GgufWriter w;
  w.AddUint8("u8", 0xff);
  w.AddInt8("i8", -128);
  w.AddUint16("u16", 0xffff);
  w.AddInt16("i16", -32768);
  w.AddUint32("u32", 0xffffffffu);
  w.AddInt32("i32", std::numeric_limits<int32_t>::min());
  w.AddUint64("u64", std::numeric_limits<uint64_t>::max());
  w.AddInt64("i64", std::numeric_limits<int64_t>::min());
  w.AddFloat32("f32", 1.5f);
  w.AddFloat64("f64", M_PI);
  w.AddBool("yes", true);
  w.AddBool("no", false);
  Parsed p = RoundTrip(w);
  ASSERT_NE(p.file, nullptr);
  const GgufFile& f = *p.file;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  ASSERT_EQ(f.metadata().size(), 12u);

  const std::vector<std::pair<std::string, GgufValueType>> want_types = {
      {"u8", GgufValueType::kUint8},    {"i8", GgufValueType::kInt8},
      {"u16", GgufValueType::kUint16},  {"i16", GgufValueType::kInt16},
      {"u32", GgufValueType::kUint32},  {"i32", GgufValueType::kInt32},
      {"u64", GgufValueType::kUint64},  {"i64", GgufValueType::kInt64},
      {"f32", GgufValueType::kFloat32}, {"f64", GgufValueType::kFloat64},
      {"yes", GgufValueType::kBool},    {"no", GgufValueType::kBool}};
  for (size_t k = 0; k < want_types.size(); ++k) {
    EXPECT_EQ(f.metadata()[k].key, want_types[k].first) << "insertion order";
    EXPECT_EQ(f.metadata()[k].value.type, want_types[k].second)
        << want_types[k].first;
  }

  EXPECT_EQ(*f.GetUint("u8"), 255u);
  EXPECT_EQ(*f.GetInt("i8"), -128);
  EXPECT_EQ(*f.GetUint("u16"), 65535u);
  EXPECT_EQ(*f.GetInt("i16"), -32768);
  EXPECT_EQ(*f.GetUint("u32"), 0xffffffffu);
  EXPECT_EQ(*f.GetInt("u32"), 0xffffffffLL);
  EXPECT_EQ(*f.GetInt("i32"), std::numeric_limits<int32_t>::min());
  EXPECT_EQ(*f.GetUint("u64"), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(*f.GetInt("i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(*f.GetFloat("f32"), 1.5);
  EXPECT_EQ(*f.GetFloat("f64"), M_PI);
  EXPECT_EQ(*f.GetFloat("i16"), -32768.0);  // integers widen to float
  EXPECT_TRUE(*f.GetBool("yes"));
  EXPECT_FALSE(*f.GetBool("no"));
  EXPECT_TRUE(f.Find("i8")->is_integer());
  EXPECT_TRUE(f.Find("f32")->is_float());
  EXPECT_FALSE(f.Find("yes")->is_integer());
}

TEST(GgufRoundTrip, FloatSpecialValues) {
  GgufWriter w;
  w.AddFloat32("nan", std::numeric_limits<float>::quiet_NaN());
  w.AddFloat32("inf", std::numeric_limits<float>::infinity());
  w.AddFloat64("negzero", -0.0);
  w.AddFloat64("denorm", std::numeric_limits<double>::denorm_min());
  Parsed p = RoundTrip(w);
  ASSERT_NE(p.file, nullptr);
  EXPECT_TRUE(std::isnan(*p.file->GetFloat("nan")));
  EXPECT_EQ(*p.file->GetFloat("inf"), std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::signbit(*p.file->GetFloat("negzero")));
  EXPECT_EQ(*p.file->GetFloat("denorm"),
            std::numeric_limits<double>::denorm_min());
}

TEST(GgufRoundTrip, StringsWithNulsAndEmptyStrings) {
  const std::string with_nuls("a\0b\0\0c", 6);
  const std::string key_with_nul("k\0ey", 4);
  GgufWriter w;
  w.AddString("nuls", with_nuls);
  w.AddString("empty", "");
  w.AddString("utf8", "h\xc3\xa9llo \xe2\x96\x81world");
  w.AddString(key_with_nul, "v");
  w.AddString("", "empty key");
  Parsed p = RoundTrip(w);
  ASSERT_NE(p.file, nullptr);
  const GgufFile& f = *p.file;
  EXPECT_EQ(*f.GetString("nuls"), with_nuls);
  EXPECT_EQ(f.Find("nuls")->str.size(), 6u);
  EXPECT_EQ(*f.GetString("empty"), "");
  EXPECT_EQ(*f.GetString("utf8"), "h\xc3\xa9llo \xe2\x96\x81world");
  EXPECT_EQ(*f.GetString(key_with_nul), "v");
  EXPECT_EQ(f.Find("k"), nullptr);  // the NUL is part of the key
  EXPECT_EQ(*f.GetString(""), "empty key");
}

TEST(GgufRoundTrip, ScalarArraysOfEveryWidth) {
  GgufWriter w;
  const std::vector<float> f32 = {1.0f, -2.5f, 3e30f};
  const std::vector<int32_t> i32 = {-1, 0, std::numeric_limits<int32_t>::max()};
  w.AddFloat32Array("f32", f32);
  w.AddInt32Array("i32", i32);
  auto raw = [&w](const char* key, GgufValueType t, auto values) {
    std::string enc;
    for (auto v : values) enc += GgufWriter::EncodeScalar(v);
    w.AddRawArray(key, t, values.size(), enc);
  };
  raw("u8", GgufValueType::kUint8, std::vector<uint8_t>{0, 1, 255});
  raw("i8", GgufValueType::kInt8, std::vector<int8_t>{-128, 127});
  raw("u16", GgufValueType::kUint16, std::vector<uint16_t>{65535, 1});
  raw("i16", GgufValueType::kInt16, std::vector<int16_t>{-32768, 2});
  raw("u32", GgufValueType::kUint32, std::vector<uint32_t>{0xffffffffu});
  raw("u64", GgufValueType::kUint64, std::vector<uint64_t>{1ull << 63, 5});
  raw("i64", GgufValueType::kInt64, std::vector<int64_t>{-(1ll << 62), 6});
  raw("f64", GgufValueType::kFloat64, std::vector<double>{0.125, -1e300});
  raw("bool", GgufValueType::kBool, std::vector<uint8_t>{1, 0, 1, 1});
  Parsed p = RoundTrip(w);
  ASSERT_NE(p.file, nullptr);
  const GgufFile& f = *p.file;

  const GgufValue* v = f.Find("f32");
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->type, GgufValueType::kArray);
  EXPECT_EQ(v->elem_type, GgufValueType::kFloat32);
  ASSERT_EQ(v->count, 3u);
  for (size_t k = 0; k < 3; ++k) EXPECT_EQ(v->NumberAt(k), f32[k]);

  v = f.Find("i32");
  ASSERT_EQ(v->count, 3u);
  for (size_t k = 0; k < 3; ++k) EXPECT_EQ(v->IntAt(k), i32[k]);

  EXPECT_EQ(f.Find("u8")->IntAt(2), 255);
  EXPECT_EQ(f.Find("i8")->IntAt(0), -128);
  EXPECT_EQ(f.Find("i8")->IntAt(1), 127);
  EXPECT_EQ(f.Find("u16")->IntAt(0), 65535);
  EXPECT_EQ(f.Find("i16")->IntAt(0), -32768);
  EXPECT_EQ(f.Find("u32")->IntAt(0), 0xffffffffLL);
  EXPECT_EQ(f.Find("u64")->NumberAt(0), 9223372036854775808.0);
  EXPECT_EQ(f.Find("i64")->IntAt(0), -(1ll << 62));
  EXPECT_EQ(f.Find("f64")->NumberAt(1), -1e300);
  const GgufValue* b = f.Find("bool");
  ASSERT_EQ(b->count, 4u);
  EXPECT_EQ(b->elem_type, GgufValueType::kBool);
  EXPECT_EQ(b->IntAt(0), 1);
  EXPECT_EQ(b->IntAt(1), 0);
}

TEST(GgufRoundTrip, IntAtSaturatesFloatsOutOfRange) {
  GgufWriter w;
  const std::vector<float> v = {std::numeric_limits<float>::quiet_NaN(), 1e30f,
                                -1e30f, std::numeric_limits<float>::infinity(),
                                -7.9f};
  w.AddFloat32Array("f", v);
  Parsed p = RoundTrip(w);
  ASSERT_NE(p.file, nullptr);
  const GgufValue* a = p.file->Find("f");
  EXPECT_EQ(a->IntAt(0), 0);
  EXPECT_EQ(a->IntAt(1), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(a->IntAt(2), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(a->IntAt(3), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(a->IntAt(4), -7);
}

TEST(GgufRoundTrip, EmptyArraysOfEveryKind) {
  GgufWriter w;
  w.AddFloat32Array("f32", {});
  w.AddInt32Array("i32", {});
  w.AddStringArray("str", {});
  w.AddRawArray("nested", GgufValueType::kArray, 0, "");
  w.AddRawArray("u64", GgufValueType::kUint64, 0, "");
  Parsed p = RoundTrip(w);
  ASSERT_NE(p.file, nullptr);
  for (const char* key : {"f32", "i32", "str", "nested", "u64"}) {
    const GgufValue* v = p.file->Find(key);
    ASSERT_NE(v, nullptr) << key;
    EXPECT_EQ(v->type, GgufValueType::kArray) << key;
    EXPECT_EQ(v->count, 0u) << key;
    EXPECT_TRUE(v->strings.empty()) << key;
    EXPECT_TRUE(v->items.empty()) << key;
  }
  EXPECT_EQ(p.file->Find("str")->elem_type, GgufValueType::kString);
  EXPECT_EQ(p.file->Find("nested")->elem_type, GgufValueType::kArray);
}

TEST(GgufRoundTrip, StringArrays) {
  GgufWriter w;
  std::vector<std::string> tokens = {"<s>", "", std::string("x\0y", 3),
                                     "\xe2\x96\x81the"};
  for (int k = 0; k < 1000; ++k) tokens.push_back(absl::StrCat("tok", k));
  w.AddStringArray("tokens", tokens);
  Parsed p = RoundTrip(w);
  ASSERT_NE(p.file, nullptr);
  const GgufValue* v = p.file->Find("tokens");
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->elem_type, GgufValueType::kString);
  ASSERT_EQ(v->count, tokens.size());
  ASSERT_EQ(v->strings.size(), tokens.size());
  for (size_t k = 0; k < tokens.size(); ++k)
    EXPECT_EQ(v->strings[k], tokens[k]);
}

TEST(GgufRoundTrip, NestedArrays) {
  using T = GgufValueType;
  GgufWriter w;
  // [["a", "bc"], [], ["\0x"]]
  const std::string strs =
      GgufWriter::EncodeArray(
          T::kString, 2,
          GgufWriter::EncodeString("a") + GgufWriter::EncodeString("bc")) +
      GgufWriter::EncodeArray(T::kString, 0, "") +
      GgufWriter::EncodeArray(T::kString, 1,
                              GgufWriter::EncodeString(std::string("\0x", 2)));
  w.AddRawArray("strs", T::kArray, 3, strs);
  // [[1, -2], [3]] as int32
  const std::string ints =
      GgufWriter::EncodeArray(T::kInt32, 2,
                              GgufWriter::EncodeScalar<int32_t>(1) +
                                  GgufWriter::EncodeScalar<int32_t>(-2)) +
      GgufWriter::EncodeArray(T::kInt32, 1,
                              GgufWriter::EncodeScalar<int32_t>(3));
  w.AddRawArray("ints", T::kArray, 2, ints);
  // [[[true]], [[0.5f, 0.25f], []]]: three levels, mixed leaf types.
  const std::string deep =
      GgufWriter::EncodeArray(
          T::kArray, 1,
          GgufWriter::EncodeArray(T::kBool, 1,
                                  GgufWriter::EncodeScalar<uint8_t>(1))) +
      GgufWriter::EncodeArray(
          T::kArray, 2,
          GgufWriter::EncodeArray(T::kFloat32, 2,
                                  GgufWriter::EncodeScalar(0.5f) +
                                      GgufWriter::EncodeScalar(0.25f)) +
              GgufWriter::EncodeArray(T::kFloat32, 0, ""));
  w.AddRawArray("deep", T::kArray, 2, deep);
  w.AddUint32("after", 42);  // parsing resumes at the right place
  Parsed p = RoundTrip(w);
  ASSERT_NE(p.file, nullptr);
  const GgufFile& f = *p.file;

  const GgufValue* s = f.Find("strs");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->elem_type, T::kArray);
  ASSERT_EQ(s->items.size(), 3u);
  EXPECT_EQ(s->items[0].elem_type, T::kString);
  EXPECT_THAT(s->items[0].strings, ElementsAre("a", "bc"));
  EXPECT_EQ(s->items[1].count, 0u);
  EXPECT_THAT(s->items[2].strings, ElementsAre(std::string_view("\0x", 2)));

  const GgufValue* i = f.Find("ints");
  ASSERT_EQ(i->items.size(), 2u);
  EXPECT_EQ(i->items[0].elem_type, T::kInt32);
  EXPECT_EQ(i->items[0].IntAt(0), 1);
  EXPECT_EQ(i->items[0].IntAt(1), -2);
  EXPECT_EQ(i->items[1].IntAt(0), 3);

  const GgufValue* d = f.Find("deep");
  ASSERT_EQ(d->items.size(), 2u);
  ASSERT_EQ(d->items[0].items.size(), 1u);
  EXPECT_EQ(d->items[0].items[0].elem_type, T::kBool);
  EXPECT_EQ(d->items[0].items[0].IntAt(0), 1);
  ASSERT_EQ(d->items[1].items.size(), 2u);
  EXPECT_EQ(d->items[1].items[0].NumberAt(1), 0.25);
  EXPECT_EQ(d->items[1].items[1].count, 0u);
  EXPECT_EQ(*f.GetUint("after"), 42u);
}

TEST(GgufRoundTrip, NestingUpToTheLimitIsAccepted) {
  // Nine levels: the outermost is depth 0, the innermost depth 8.
  std::string inner = GgufWriter::EncodeArray(GgufValueType::kUint8, 1, "\7");
  for (int level = 8; level >= 2; --level) {
    inner = GgufWriter::EncodeArray(GgufValueType::kArray, 1, inner);
  }
  GgufWriter w;
  w.AddRawArray("deep", GgufValueType::kArray, 1, inner);
  Parsed p = RoundTrip(w);
  ASSERT_NE(p.file, nullptr);
  const GgufValue* v = p.file->Find("deep");
  for (int level = 1; level < 9; ++level) {
    ASSERT_EQ(v->items.size(), 1u) << level;
    v = &v->items[0];
  }
  EXPECT_EQ(v->elem_type, GgufValueType::kUint8);
  EXPECT_EQ(v->IntAt(0), 7);
}

TEST(GgufRoundTrip, AddingAKeyTwiceReplacesItInPlace) {
  GgufWriter w;
  w.AddUint32("a", 1);
  w.AddString("b", "x");
  w.AddString("a", "now a string");
  Parsed p = RoundTrip(w);
  ASSERT_NE(p.file, nullptr);
  ASSERT_EQ(p.file->metadata().size(), 2u);
  EXPECT_EQ(p.file->metadata()[0].key, "a");
  EXPECT_EQ(*p.file->GetString("a"), "now a string");
}

// One tensor the tests add and check.
struct TensorSpec {
  std::string name;
  GgmlType type;
  std::vector<uint64_t> dims;
  size_t n_bytes;
};

const std::vector<TensorSpec>& SeveralTensors() {
  static const std::vector<TensorSpec> specs = {
      {"tok_embd.weight", GgmlType::kF32, {4, 3}, 48},
      {"odd.i8", GgmlType::kI8, {5}, 5},
      {"norm.f16", GgmlType::kF16, {8}, 16},
      {"blk.0.q4_0", GgmlType::kQ4_0, {64, 2}, 2 * 2 * 18},
      {"blk.0.q8_0", GgmlType::kQ8_0, {32}, 34},
      {"blk.0.q4_k", GgmlType::kQ4_K, {256, 1, 2}, 2 * 144},
      {"blk.0.q6_k", GgmlType::kQ6_K, {512}, 2 * 210},
      {"bf16.4d", GgmlType::kBF16, {3, 1, 2, 2}, 24},
  };
  return specs;
}

void CheckTensors(const Parsed& p, uint64_t alignment) {
  const GgufFile& f = *p.file;
  EXPECT_EQ(f.alignment(), alignment);
  EXPECT_EQ(f.data_offset() % alignment, 0u);
  EXPECT_EQ(f.size() % alignment, 0u) << "data section padded";
  const auto& specs = SeveralTensors();
  ASSERT_EQ(f.tensors().size(), specs.size());
  uint64_t expect_offset = f.data_offset();
  for (size_t k = 0; k < specs.size(); ++k) {
    const TensorSpec& s = specs[k];
    const GgufTensorInfo& t = f.tensors()[k];
    EXPECT_EQ(t.name, s.name);
    EXPECT_EQ(f.FindTensor(s.name), &t);
    EXPECT_EQ(t.type, s.type) << s.name;
    EXPECT_EQ(t.n_dims, s.dims.size()) << s.name;
    uint64_t n = 1;
    for (size_t d = 0; d < 4; ++d) {
      const uint64_t want = d < s.dims.size() ? s.dims[d] : 1;
      EXPECT_EQ(t.dims[d], want) << s.name << " dim " << d;
      n *= want;
    }
    EXPECT_EQ(t.n_elements, n) << s.name;
    EXPECT_EQ(t.rows(), n / s.dims[0]) << s.name;
    EXPECT_EQ(t.n_bytes, s.n_bytes) << s.name;
    EXPECT_EQ(t.offset, expect_offset) << s.name;
    EXPECT_EQ(t.offset % alignment, 0u) << s.name;
    EXPECT_EQ(AsString(f.TensorData(t)),
              Pattern(s.n_bytes, static_cast<uint8_t>(k + 1)))
        << s.name;
    expect_offset += (s.n_bytes + alignment - 1) / alignment * alignment;
  }
  EXPECT_EQ(expect_offset, f.size());
  EXPECT_EQ(f.FindTensor("nope"), nullptr);
}

class GgufAlignmentTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(GgufAlignmentTest, SeveralTensorsRoundTrip) {
  const uint32_t alignment = GetParam();
  GgufWriter w(alignment);
  EXPECT_EQ(w.alignment(), alignment);
  w.AddString("general.architecture", "llama");
  const auto& specs = SeveralTensors();
  for (size_t k = 0; k < specs.size(); ++k) {
    const TensorSpec& s = specs[k];
    ASSERT_TRUE(w.AddTensor(s.name, s.type, s.dims,
                            Pattern(s.n_bytes, static_cast<uint8_t>(k + 1)))
                    .ok())
        << s.name;
  }
  Parsed p = RoundTrip(w);
  ASSERT_NE(p.file, nullptr);
  const GgufValue* a = p.file->Find("general.alignment");
  if (alignment == 32) {
    EXPECT_EQ(a, nullptr) << "the default alignment is not written";
    EXPECT_EQ(p.file->metadata().size(), 1u);
  } else {
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(a->type, GgufValueType::kUint32);
    EXPECT_EQ(a->u, alignment);
  }
  CheckTensors(p, alignment);
}

INSTANTIATE_TEST_SUITE_P(Alignments, GgufAlignmentTest,
                         ::testing::Values(1u, 8u, 32u, 64u, 256u, 4096u));

TEST(GgufRoundTrip, WriteFileThenOpenMapsTheSameFile) {
  GgufWriter w(64);
  w.AddString("general.name", "mapped");
  const auto& specs = SeveralTensors();
  for (size_t k = 0; k < specs.size(); ++k) {
    ASSERT_TRUE(
        w.AddTensor(specs[k].name, specs[k].type, specs[k].dims,
                    Pattern(specs[k].n_bytes, static_cast<uint8_t>(k + 1)))
            .ok());
  }
  const std::string path = testing::TempDir() + "/model.gguf";
  ASSERT_TRUE(w.WriteFile(path).ok());
  auto f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->path(), path);
  EXPECT_EQ(*(*f)->GetString("general.name"), "mapped");
  Parsed p;
  p.file = std::move(*f);
  CheckTensors(p, 64);
  EXPECT_EQ(testing::ReadFileOrFail(path), w.Serialize());
}

// The same tensors as SeveralTensors(), every other one declared with
// AddTensorInfo() and streamed; the fill writes each in reverse-order pieces
// from two threads.
class GgufStreamingTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(GgufStreamingTest, StreamedFileEqualsSerialize) {
  const uint32_t alignment = GetParam();
  GgufWriter in_memory(alignment), streamed(alignment);
  const auto& specs = SeveralTensors();
  std::vector<std::string> data;
  for (GgufWriter* w : {&in_memory, &streamed}) w->AddString("general.name", "streamed");
  for (size_t k = 0; k < specs.size(); ++k) {
    const TensorSpec& t = specs[k];
    data.push_back(Pattern(t.n_bytes, static_cast<uint8_t>(k + 1)));
    ASSERT_TRUE(in_memory.AddTensor(t.name, t.type, t.dims, data[k]).ok());
    ASSERT_EQ(streamed.tensor_count(), k);
    const absl::Status s = k % 2 == 0 ? streamed.AddTensor(t.name, t.type, t.dims, data[k])
                                      : streamed.AddTensorInfo(t.name, t.type, t.dims);
    ASSERT_TRUE(s.ok()) << s;
  }
  std::vector<size_t> filled;
  const std::string path = testing::TempDir() + "/streamed.gguf";
  const absl::Status s = streamed.WriteFileStreaming(path, [&](size_t index, GgufTensorSink& sink) {
    filled.push_back(index);
    EXPECT_EQ(sink.size(), specs[index].n_bytes);
    const std::string& d = data[index];
    // Pieces of 3 bytes, last piece first, alternating threads.
    std::vector<std::thread> threads;
    std::vector<absl::Status> results((d.size() + 2) / 3);
    for (size_t piece = results.size(); piece-- > 0;) {
      threads.emplace_back([&, piece] {
        const size_t off = piece * 3;
        results[piece] = sink.Write(off, std::string_view(d).substr(off, 3));
      });
    }
    for (std::thread& t : threads) t.join();
    for (const absl::Status& r : results) {
      if (!r.ok()) return r;
    }
    return absl::OkStatus();
  });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_THAT(filled, ElementsAre(1, 3, 5, 7)) << "fill runs for streamed tensors, in order";
  const std::string want = in_memory.Serialize();
  EXPECT_EQ(testing::ReadFileOrFail(path), want);
  // Serialize() of the streaming writer has the same layout, zeros for data.
  const std::string layout_only = streamed.Serialize();
  ASSERT_EQ(layout_only.size(), want.size());
  auto p = ParseBytes(layout_only);
  ASSERT_TRUE(p.ok()) << p.status();
  for (size_t k = 0; k < specs.size(); ++k) {
    const std::string got = AsString(p->file->TensorData(p->file->tensors()[k]));
    EXPECT_EQ(got, k % 2 == 0 ? data[k] : std::string(specs[k].n_bytes, '\0')) << k;
  }
}

INSTANTIATE_TEST_SUITE_P(Alignments, GgufStreamingTest, ::testing::Values(1u, 32u, 4096u));

TEST(GgufStreaming, ShortFillFailsAndRemovesTheFile) {
  GgufWriter w;
  ASSERT_TRUE(w.AddTensorInfo("t", GgmlType::kF32, {8}).ok());
  const std::string path = testing::TempDir() + "/short.gguf";
  const absl::Status s = w.WriteFileStreaming(
      path, [](size_t, GgufTensorSink& sink) { return sink.Write(0, std::string(16, 'x')); });
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("tensor 't' got 16 bytes, it needs 32"));
  struct stat st;
  EXPECT_NE(::stat(path.c_str(), &st), 0) << "the partial file was left behind";
}

TEST(GgufStreaming, WritePastTheTensorFailsAndFillErrorsPropagate) {
  GgufWriter w;
  ASSERT_TRUE(w.AddTensorInfo("t", GgmlType::kF16, {4}).ok());
  const std::string path = testing::TempDir() + "/past.gguf";
  absl::Status write_status;
  const absl::Status s = w.WriteFileStreaming(path, [&](size_t, GgufTensorSink& sink) {
    write_status = sink.Write(7, "ab");
    return write_status;
  });
  EXPECT_EQ(write_status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(std::string(write_status.message()), HasSubstr("2 bytes at 7 runs past its 8"));
  EXPECT_EQ(s, write_status);
  const absl::Status custom = w.WriteFileStreaming(
      path, [](size_t, GgufTensorSink&) { return absl::CancelledError("stop here"); });
  EXPECT_EQ(custom, absl::CancelledError("stop here"));
}

TEST(GgufStreaming, DevicesAreWrittenNotSizedOrRemoved) {
  GgufWriter w;
  ASSERT_TRUE(w.AddTensorInfo("t", GgmlType::kF32, {8}).ok());
  const absl::Status s = w.WriteFileStreaming("/dev/null", [](size_t, GgufTensorSink& sink) {
    return sink.Write(0, std::string(32, 'x'));
  });
  EXPECT_TRUE(s.ok()) << s;
}

TEST(GgufStreaming, TensorsWithoutDataNeedAFill) {
  GgufWriter w;
  ASSERT_TRUE(w.AddTensorInfo("later", GgmlType::kQ8_0, {32, 2}).ok());
  const std::string path = testing::TempDir() + "/nofill.gguf";
  for (const absl::Status& s : {w.WriteFile(path), w.WriteFileStreaming(path, nullptr)}) {
    ASSERT_FALSE(s.ok());
    EXPECT_THAT(std::string(s.message()), HasSubstr("tensor 'later' has no data"));
  }
}

TEST(GgufStreaming, AddTensorInfoValidatesLikeAddTensor) {
  GgufWriter w;
  auto err = [](const absl::Status& s) { return std::string(s.message()); };
  ASSERT_TRUE(w.AddTensor("a", GgmlType::kF32, {1}, std::string(4, '\0')).ok());
  EXPECT_THAT(err(w.AddTensorInfo("a", GgmlType::kF32, {1})),
              HasSubstr("tensor 'a': duplicate tensor name"));
  ASSERT_TRUE(w.AddTensorInfo("b", GgmlType::kQ4_K, {256, 3}).ok());
  EXPECT_THAT(err(w.AddTensor("b", GgmlType::kF32, {1}, std::string(4, '\0'))),
              HasSubstr("tensor 'b': duplicate tensor name"));
  EXPECT_THAT(err(w.AddTensorInfo("c", GgmlType::kQ4_K, {128})),
              HasSubstr("ne0=128 is not a multiple of the Q4_K block size 256"));
  EXPECT_THAT(err(w.AddTensorInfo("d", GgmlType::kF32, {4, 0})), HasSubstr("dimension 1 is zero"));
  EXPECT_EQ(w.tensor_count(), 2u);
  GgufWriter bad(3);
  EXPECT_THAT(err(bad.AddTensorInfo("t", GgmlType::kF32, {1})), HasSubstr("not a power of two"));
}

TEST(GgufRoundTrip, OpenMissingFileNamesThePath) {
  const std::string path = testing::TempDir() + "/missing.gguf";
  auto f = GgufFile::Open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr(path));
}

TEST(GgufRoundTrip, WriteFileToAMissingDirectoryFails) {
  GgufWriter w;
  const std::string path = testing::TempDir() + "/no/such/dir/x.gguf";
  const absl::Status s = w.WriteFile(path);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr(path));
}

TEST(GgufRoundTrip, VocabOnlyFileHasNoTensors) {
  GgufWriter w;
  w.AddString("general.architecture", "llama");
  w.AddString("tokenizer.ggml.model", "llama");
  w.AddStringArray("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "a"});
  w.AddFloat32Array("tokenizer.ggml.scores", std::vector<float>{0, 0, 0, -1});
  w.AddInt32Array("tokenizer.ggml.token_type",
                  std::vector<int32_t>{2, 3, 3, 1});
  w.AddUint32("tokenizer.ggml.bos_token_id", 1);
  Parsed p = RoundTrip(w);
  ASSERT_NE(p.file, nullptr);
  EXPECT_TRUE(p.file->tensors().empty());
  EXPECT_EQ(p.file->metadata().size(), 6u);
  EXPECT_EQ(p.file->Find("tokenizer.ggml.tokens")->strings.size(), 4u);
  EXPECT_EQ(p.file->Find("tokenizer.ggml.token_type")->IntAt(0), 2);
  EXPECT_EQ(*p.file->GetUint("tokenizer.ggml.bos_token_id"), 1u);
  // Without tensors the padding is optional: the file may end right after
  // its last value (key, uint32 type, uint32 value).
  const std::string last = "tokenizer.ggml.bos_token_id";
  const size_t end = p.bytes.find(last) + last.size() + 4 + 4;
  ASSERT_LT(end, p.bytes.size());
  auto q = ParseBytes(p.bytes.substr(0, end));
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(*q->file->GetUint("tokenizer.ggml.bos_token_id"), 1u);
}

// v2 has the v3 layout (64-bit counts and lengths); built by hand here since
// the writer only writes v3.
TEST(GgufRoundTrip, HandBuiltVersion2File) {
  std::string b = "GGUF";
  Put<uint32_t>(&b, 2);  // version
  Put<uint64_t>(&b, 1);  // tensors
  Put<uint64_t>(&b, 2);  // kv
  b += GgufWriter::EncodeString("general.architecture");
  Put<uint32_t>(&b, static_cast<uint32_t>(GgufValueType::kString));
  b += GgufWriter::EncodeString("llama");
  b += GgufWriter::EncodeString("general.file_type");
  Put<uint32_t>(&b, static_cast<uint32_t>(GgufValueType::kUint32));
  Put<uint32_t>(&b, 1);
  b += GgufWriter::EncodeString("w");
  Put<uint32_t>(&b, 2);  // n_dims
  Put<uint64_t>(&b, 2);
  Put<uint64_t>(&b, 3);
  Put<uint32_t>(&b, static_cast<uint32_t>(GgmlType::kF32));
  Put<uint64_t>(&b, 0);  // offset in the data section
  const uint64_t data_start = (b.size() + 31) / 32 * 32;
  b.resize(data_start, '\0');
  for (int k = 0; k < 6; ++k) Put<float>(&b, 0.5f * k);

  auto p = ParseBytes(b, "v2.gguf");
  ASSERT_TRUE(p.ok()) << p.status();
  const GgufFile& f = *p->file;
  EXPECT_EQ(f.version(), 2u);
  EXPECT_EQ(*f.GetString("general.architecture"), "llama");
  EXPECT_EQ(*f.GetUint("general.file_type"), 1u);
  ASSERT_EQ(f.tensors().size(), 1u);
  const GgufTensorInfo& t = f.tensors()[0];
  EXPECT_EQ(t.n_elements, 6u);
  EXPECT_EQ(t.offset, data_start);
  float x[6];
  std::memcpy(x, f.TensorData(t).data(), sizeof(x));
  EXPECT_EQ(x[5], 2.5f);

  // The same bytes as a v3 file parse identically.
  b[4] = 3;
  auto q = ParseBytes(b);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->file->version(), 3u);
  EXPECT_EQ(q->file->tensors()[0].offset, data_start);
}

TEST(GgufGetters, MissingKeyNamesKeyAndFile) {
  GgufWriter w;
  w.AddUint32("present", 1);
  auto p = ParseBytes(w.Serialize(), "model-x.gguf");
  ASSERT_TRUE(p.ok());
  const GgufFile& f = *p->file;
  const std::vector<absl::Status> errors = {
      f.GetString("llama.context_length").status(),
      f.GetUint("llama.context_length").status(),
      f.GetInt("llama.context_length").status(),
      f.GetFloat("llama.context_length").status(),
      f.GetBool("llama.context_length").status()};
  for (const absl::Status& s : errors) {
    EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("model-x.gguf"));
    EXPECT_THAT(std::string(s.message()),
                HasSubstr("missing metadata key 'llama.context_length'"));
  }
  EXPECT_EQ(f.Find("llama.context_length"), nullptr);
}

TEST(GgufGetters, WrongTypeNamesKeyActualAndExpectedType) {
  GgufWriter w;
  w.AddUint32("u32", 1);
  w.AddString("str", "x");
  w.AddFloat32("f32", 1);
  w.AddBool("bool", true);
  w.AddStringArray("arr", {"a"});
  w.AddUint8("u8", 1);
  auto p = ParseBytes(w.Serialize(), "model-y.gguf");
  ASSERT_TRUE(p.ok());
  const GgufFile& f = *p->file;
  struct Case {
    absl::Status status;
    const char* want;
  };
  const std::vector<Case> cases = {
      {f.GetString("u32").status(),
       "metadata key 'u32' has type uint32, expected string"},
      {f.GetUint("str").status(),
       "metadata key 'str' has type string, expected an integer"},
      {f.GetInt("f32").status(),
       "metadata key 'f32' has type float32, expected an integer"},
      {f.GetUint("bool").status(),
       "metadata key 'bool' has type bool, expected an integer"},
      {f.GetFloat("str").status(),
       "metadata key 'str' has type string, expected a number"},
      {f.GetFloat("arr").status(),
       "metadata key 'arr' has type array, expected a number"},
      {f.GetBool("u8").status(),
       "metadata key 'u8' has type uint8, expected bool"},
      {f.GetString("arr").status(),
       "metadata key 'arr' has type array, expected string"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(c.status.code(), absl::StatusCode::kInvalidArgument) << c.status;
    EXPECT_THAT(std::string(c.status.message()), HasSubstr("model-y.gguf"));
    EXPECT_THAT(std::string(c.status.message()), HasSubstr(c.want));
  }
}

TEST(GgufGetters, IntegerRangeChecks) {
  GgufWriter w;
  w.AddInt32("neg", -5);
  w.AddUint64("huge", std::numeric_limits<uint64_t>::max());
  w.AddInt8("pos", 5);
  auto p = ParseBytes(w.Serialize());
  ASSERT_TRUE(p.ok());
  const GgufFile& f = *p->file;
  EXPECT_THAT(std::string(f.GetUint("neg").status().message()),
              HasSubstr("'neg' is negative (-5)"));
  EXPECT_EQ(*f.GetInt("neg"), -5);
  EXPECT_THAT(std::string(f.GetInt("huge").status().message()),
              HasSubstr("'huge' is out of range"));
  EXPECT_EQ(*f.GetUint("pos"), 5u);
}

TEST(GgufWriter, AddTensorValidatesGeometry) {
  GgufWriter w;
  auto err = [](const absl::Status& s) { return std::string(s.message()); };
  ASSERT_TRUE(
      w.AddTensor("ok", GgmlType::kQ4_0, {32, 2}, std::string(36, '\1')).ok());
  EXPECT_THAT(err(w.AddTensor("ok", GgmlType::kF32, {1}, std::string(4, '\0'))),
              HasSubstr("tensor 'ok': duplicate tensor name"));
  EXPECT_THAT(
      err(w.AddTensor("size", GgmlType::kQ4_0, {32, 2}, std::string(35, '\0'))),
      HasSubstr("data has 35 bytes, Q4_0 of 64 elements needs 36"));
  EXPECT_THAT(
      err(w.AddTensor("size", GgmlType::kF16, {3}, std::string(8, '\0'))),
      HasSubstr("data has 8 bytes, F16 of 3 elements needs 6"));
  EXPECT_THAT(
      err(w.AddTensor("block", GgmlType::kQ4_0, {33}, std::string(18, '\0'))),
      HasSubstr("ne0=33 is not a multiple of the Q4_0 block size 32"));
  EXPECT_THAT(
      err(w.AddTensor("block", GgmlType::kQ6_K, {128}, std::string(105, '\0'))),
      HasSubstr("not a multiple of the Q6_K block size 256"));
  EXPECT_THAT(err(w.AddTensor("nodims", GgmlType::kF32, {}, "")),
              HasSubstr("0 dimensions (1..4 allowed)"));
  EXPECT_THAT(err(w.AddTensor("fivedims", GgmlType::kF32, {1, 1, 1, 1, 1}, "")),
              HasSubstr("5 dimensions (1..4 allowed)"));
  EXPECT_THAT(err(w.AddTensor("zero", GgmlType::kF32, {4, 0}, "")),
              HasSubstr("dimension 1 is zero"));
  EXPECT_THAT(err(w.AddTensor("overflow", GgmlType::kF32,
                              {1ull << 32, 1ull << 32}, "")),
              HasSubstr("element count overflows"));
  EXPECT_THAT(err(w.AddTensor("bytes", GgmlType::kF64, {1ull << 62}, "")),
              HasSubstr("byte size overflows"));
  EXPECT_THAT(err(w.AddTensor("type", static_cast<GgmlType>(4), {32}, "")),
              HasSubstr("unknown type type#4"));
  // The failures added nothing.
  Parsed p = RoundTrip(w);
  ASSERT_NE(p.file, nullptr);
  EXPECT_EQ(p.file->tensors().size(), 1u);
}

TEST(GgufWriter, InvalidAlignmentRefusesTensorsAndFiles) {
  for (uint32_t a : {0u, 3u, 96u}) {
    GgufWriter w(a);
    EXPECT_THAT(
        std::string(w.AddTensor("t", GgmlType::kF32, {1}, std::string(4, '\0'))
                        .message()),
        HasSubstr("is not a power of two"))
        << a;
    EXPECT_FALSE(w.WriteFile(testing::TempDir() + "/bad.gguf").ok()) << a;
    // Serialize() still writes the header, which the reader rejects.
    auto p = ParseBytes(w.Serialize());
    ASSERT_FALSE(p.ok()) << a;
    EXPECT_THAT(std::string(p.status().message()),
                HasSubstr("not a power of two"));
  }
}

TEST(GgufWriter, HeaderBytesAreLittleEndianV3) {
  GgufWriter w;
  w.AddUint16("k", 0x0102);
  const std::string b = w.Serialize();
  std::string want = "GGUF";
  Put<uint32_t>(&want, 3);
  Put<uint64_t>(&want, 0);
  Put<uint64_t>(&want, 1);
  Put<uint64_t>(&want, 1);
  want += "k";
  Put<uint32_t>(&want, 2);  // uint16
  want += "\x02\x01";
  ASSERT_EQ(want.size(), 39u);
  want.resize(64, '\0');  // padded to the alignment
  EXPECT_EQ(b, want);
}

}  // namespace
}  // namespace m40llm
