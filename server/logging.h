// Log output for `m40llm serve`: the level and the line format (plain text,
// or one JSON object per line for log collectors) of the default spdlog
// logger, which writes to stderr.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace m40llm {

// `level`: trace, debug, info, warn, error, critical or off. `format`:
// "text" ("2025-01-31 12:00:00.123 [info] message") or "json"
// ({"time":"2025-01-31T12:00:00.123Z","level":"info","thread":123,"msg":"message"}).
// INVALID_ARGUMENT naming the bad value.
[[nodiscard]] absl::Status ConfigureLogging(const std::string& level, const std::string& format);

}  // namespace m40llm
