// The GGUF reader against hand-made broken files: every prefix of valid
// files, and a corpus of targeted corruptions (tests/support/gguf_corpus.h).
// Each must give a clean InvalidArgument naming the file, the byte offset and
// the problem. Buffers are exact-size heap copies so that an ASan build
// catches any read past the end.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/gguf.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/gguf_corpus.h"
#include "tests/support/test_support.h"

namespace m40llm {
namespace {

using ::m40llm::testing::GgufSample;
using ::m40llm::testing::MalformedGguf;
using ::testing::HasSubstr;

// Parses a copy of `bytes[0, size)` held in a buffer of exactly that size;
// the parse status (the file, which only views the buffer, is dropped).
absl::Status ParseExact(const std::string& name, const std::string& bytes,
                        size_t size) {
  auto buf = std::make_unique<uint8_t[]>(size == 0 ? 1 : size);
  std::memcpy(buf.get(), bytes.data(), size);
  return GgufFile::FromBuffer(name, size == 0 ? nullptr : buf.get(), size)
      .status();
}

// The byte offset a reader message names ("...: offset N: ..."), or -1.
int64_t OffsetIn(const std::string& message) {
  const std::string tag = ": offset ";
  const size_t at = message.find(tag);
  if (at == std::string::npos) return -1;
  size_t end = at + tag.size();
  int64_t n = 0;
  while (end < message.size() && message[end] >= '0' && message[end] <= '9') {
    n = n * 10 + (message[end++] - '0');
  }
  if (end == at + tag.size() || message.compare(end, 2, ": ") != 0) return -1;
  return n;
}

class MalformedGgufTest : public ::testing::TestWithParam<MalformedGguf> {};

TEST_P(MalformedGgufTest, CleanErrorNamingFileOffsetAndProblem) {
  const MalformedGguf& c = GetParam();
  const std::string name = absl::StrCat("corpus/", c.name, ".gguf");
  auto buf = std::make_unique<uint8_t[]>(c.bytes.size() + 1);
  std::memcpy(buf.get(), c.bytes.data(), c.bytes.size());
  auto file = GgufFile::FromBuffer(name, buf.get(), c.bytes.size());
  ASSERT_FALSE(file.ok()) << c.name << " parsed";
  const absl::Status& s = file.status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  const std::string msg(s.message());
  EXPECT_THAT(msg, HasSubstr(name));
  EXPECT_THAT(msg, HasSubstr(absl::StrCat(": offset ", c.offset, ": ")));
  EXPECT_THAT(msg, HasSubstr(c.phrase));
}

INSTANTIATE_TEST_SUITE_P(
    Corpus, MalformedGgufTest,
    ::testing::ValuesIn(testing::MalformedGgufCorpus()),
    [](const ::testing::TestParamInfo<MalformedGguf>& info) {
      return info.param.name;
    });

TEST(MalformedGgufCorpus, NamesAreUniqueAndCasesDiffer) {
  const auto corpus = testing::MalformedGgufCorpus();
  std::set<std::string> names;
  for (const MalformedGguf& c : corpus) {
    EXPECT_TRUE(names.insert(c.name).second) << c.name;
    EXPECT_LE(c.offset, c.bytes.size()) << c.name;
  }
  EXPECT_GE(corpus.size(), 60u);
}

// The base files themselves must parse, and their layouts must match what
// the reader sees, or the corpus offsets would be meaningless.
class ValidSampleTest : public ::testing::TestWithParam<GgufSample> {};

TEST_P(ValidSampleTest, ParsesAndMatchesItsLayout) {
  const GgufSample& s = GetParam();
  auto file = GgufFile::FromBuffer(
      s.name, reinterpret_cast<const uint8_t*>(s.bytes.data()), s.bytes.size());
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;
  EXPECT_EQ(f.metadata().size(), s.layout.kv_at.size());
  EXPECT_EQ(f.tensors().size(), s.layout.tensors.size());
  EXPECT_EQ(f.data_offset(), s.layout.data_start);
  for (const GgufTensorInfo& t : f.tensors()) {
    const auto& tl = s.layout.tensors.at(std::string(t.name));
    EXPECT_EQ(t.header_pos, tl.info_at) << t.name;
    EXPECT_EQ(t.offset, tl.data_at) << t.name;
    EXPECT_EQ(t.n_bytes, tl.n_bytes) << t.name;
  }
  EXPECT_EQ(s.bytes.size() % f.alignment(), 0u);
}

// Every prefix shorter than the last tensor's end is an error whose offset
// lies inside the prefix; longer prefixes (missing only trailing padding)
// are still valid.
TEST_P(ValidSampleTest, EveryPrefixIsACleanErrorOrValid) {
  const GgufSample& s = GetParam();
  const std::string name = absl::StrCat(s.name, ".gguf");
  ASSERT_LE(s.layout.min_valid_size, s.bytes.size());
  for (size_t n = 0; n <= s.bytes.size(); ++n) {
    const absl::Status r = ParseExact(name, s.bytes, n);
    if (n >= s.layout.min_valid_size) {
      EXPECT_TRUE(r.ok()) << "prefix " << n << ": " << r;
      continue;
    }
    ASSERT_EQ(r.code(), absl::StatusCode::kInvalidArgument)
        << "prefix " << n << ": " << r;
    const std::string msg(r.message());
    EXPECT_THAT(msg, HasSubstr(name)) << "prefix " << n;
    const int64_t at = OffsetIn(msg);
    EXPECT_GE(at, 0) << "prefix " << n << ": " << msg;
    EXPECT_LE(at, static_cast<int64_t>(n)) << "prefix " << n << ": " << msg;
  }
}

INSTANTIATE_TEST_SUITE_P(Samples, ValidSampleTest,
                         ::testing::ValuesIn(testing::ValidGgufSamples()),
                         [](const ::testing::TestParamInfo<GgufSample>& info) {
                           return info.param.name;
                         });

// Flipping any single byte of the base file must never crash; whatever the
// reader accepts must be internally consistent.
TEST(MalformedGguf, EverySingleByteCorruptionIsSafe) {
  const GgufSample base = testing::BaseGguf();
  for (size_t i = 0; i < base.layout.data_start; ++i) {
    for (uint8_t v :
         {uint8_t{0x00}, uint8_t{0xff}, uint8_t{0x80}, uint8_t{0x01}}) {
      std::string bytes = base.bytes;
      if (static_cast<uint8_t>(bytes[i]) == v) continue;
      bytes[i] = static_cast<char>(v);
      auto buf = std::make_unique<uint8_t[]>(bytes.size());
      std::memcpy(buf.get(), bytes.data(), bytes.size());
      auto file = GgufFile::FromBuffer("flip.gguf", buf.get(), bytes.size());
      if (!file.ok()) {
        EXPECT_THAT(std::string(file.status().message()),
                    HasSubstr("flip.gguf: offset "))
            << "byte " << i << " = " << int{v};
        continue;
      }
      for (const GgufTensorInfo& t : (*file)->tensors()) {
        EXPECT_LE(t.offset + t.n_bytes, bytes.size());
        EXPECT_EQ(t.offset % (*file)->alignment(), 0u);
      }
    }
  }
}

TEST(MalformedGguf, OpenEmptyFileNamesThePath) {
  const std::string path = testing::TempDir() + "/empty.gguf";
  {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    std::fclose(f);
  }
  auto file = GgufFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(file.status().message()),
              HasSubstr(absl::StrCat(path, ": offset 0: truncated file")));
}

TEST(MalformedGguf, OpenDirectoryIsRejected) {
  const std::string dir = testing::TempDir();
  auto file = GgufFile::Open(dir);
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(std::string(file.status().message()),
              HasSubstr("not a regular file"));
}

}  // namespace
}  // namespace m40llm
