// Writes the fuzzer's seed corpus: the valid samples and every malformed case
// of tests/support/gguf_corpus.h, one file each, into the directory given as
// the only argument. Also checks that each valid sample parses and each
// malformed case fails, so stale seeds are noticed.
#include <cstdio>
#include <string>

#include "engine/gguf.h"
#include "tests/support/gguf_corpus.h"

namespace {

bool WriteBytes(const std::string& path, const std::string& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    std::perror(path.c_str());
    return false;
  }
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  return std::fclose(f) == 0 && ok;
}

bool Parses(const std::string& name, const std::string& bytes) {
  return m40llm::GgufFile::FromBuffer(
             name, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size())
      .ok();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT_DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  int n = 0;
  for (const auto& s : m40llm::testing::ValidGgufSamples()) {
    if (!Parses(s.name, s.bytes)) {
      std::fprintf(stderr, "valid sample %s does not parse\n", s.name.c_str());
      return 1;
    }
    if (!WriteBytes(dir + "/valid_" + s.name + ".gguf", s.bytes)) return 1;
    ++n;
  }
  for (const auto& c : m40llm::testing::MalformedGgufCorpus()) {
    if (Parses(c.name, c.bytes)) {
      std::fprintf(stderr, "malformed case %s parses\n", c.name.c_str());
      return 1;
    }
    if (!WriteBytes(dir + "/bad_" + c.name + ".gguf", c.bytes)) return 1;
    ++n;
  }
  std::printf("wrote %d seed files to %s\n", n, dir.c_str());
  return 0;
}
