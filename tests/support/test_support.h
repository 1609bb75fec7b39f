// Shared helpers for the test suite: fixture lookup and numeric comparison.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace m40llm::testing {

// The conformance fixtures folder: $M40LLM_FIXTURES, else the CMake option
// M40LLM_FIXTURES_DIR; nullopt when neither names an existing folder.
std::optional<std::string> FixturesDir();

// Whole file as bytes; fails the current test (and returns empty) on error.
std::string ReadFileOrFail(const std::string& path);

// ||a - b||_2 / ||b||_2 (b is the reference).
double RelL2(const float* a, const float* b, size_t n);

// A fresh temporary directory for this test; removed at process exit is not
// guaranteed, so keep files small.
std::string TempDir();

}  // namespace m40llm::testing

// Skips the current test with a visible reason when the fixtures are absent.
// Usage: M40_REQUIRE_FIXTURES(dir);  then use `dir` (a std::string).
#define M40_REQUIRE_FIXTURES(dir)                                             \
  std::string dir;                                                            \
  if (auto m40_fx_ = ::m40llm::testing::FixturesDir()) {                      \
    dir = *m40_fx_;                                                           \
  } else {                                                                    \
    GTEST_SKIP() << "conformance fixtures not found: set M40LLM_FIXTURES to " \
                    "the fixtures folder (../shared/fixtures)";               \
  }
