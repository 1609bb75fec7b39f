// Writes a benchmark's JSON result and says where, or why it could not: one
// place for every benchmark binary and `m40llm bench`.
#pragma once

#include <cstdio>
#include <fstream>
#include <string>

#include "nlohmann/json.hpp"

namespace m40llm::bench {

// Writes `j` (indented) to `path`; returns the process exit code: 0, or 1
// with the reason on stderr when the file cannot be written.
inline int WriteJsonResult(const std::string& path, const nlohmann::json& j) {
  std::ofstream f(path);
  f << j.dump(2) << "\n";
  f.close();
  if (!f) {
    std::fprintf(stderr, "error: cannot write %s\n", path.c_str());
    return 1;
  }
  std::printf("wrote %s\n", path.c_str());
  return 0;
}

}  // namespace m40llm::bench
