// Shared helpers for the test suite.
#include "tests/support/test_support.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#ifndef M40LLM_FIXTURES_DEFAULT
#define M40LLM_FIXTURES_DEFAULT ""
#endif

namespace m40llm::testing {

namespace {
bool IsDir(const std::string& p) {
  struct stat st;
  return !p.empty() && ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
}  // namespace

std::optional<std::string> FixturesDir() {
  if (const char* env = std::getenv("M40LLM_FIXTURES"); env && *env) {
    if (IsDir(env)) return std::string(env);
    return std::nullopt;
  }
  if (IsDir(M40LLM_FIXTURES_DEFAULT)) return std::string(M40LLM_FIXTURES_DEFAULT);
  return std::nullopt;
}

std::string ReadFileOrFail(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    ADD_FAILURE() << "cannot read " << path;
    return {};
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

double RelL2(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  if (den == 0) return num == 0 ? 0 : INFINITY;
  if (!std::isfinite(num)) return INFINITY;
  return std::sqrt(num / den);
}

std::string TempDir() {
  std::string tmpl = ::testing::TempDir() + "m40llm_XXXXXX";
  char* d = ::mkdtemp(tmpl.data());
  if (d == nullptr) {
    ADD_FAILURE() << "mkdtemp failed";
    return ::testing::TempDir();
  }
  return tmpl;
}

}  // namespace m40llm::testing
