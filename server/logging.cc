// Text and JSON-lines log formats for the default logger (see logging.h).
#include "server/logging.h"

#include <time.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "spdlog/formatter.h"
#include "spdlog/spdlog.h"

namespace m40llm {
namespace {

// RFC 3339 UTC with milliseconds: 2025-01-31T12:00:00.123Z.
std::string Rfc3339(spdlog::log_clock::time_point t) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch());
  const time_t secs = static_cast<time_t>(ms.count() / 1000);
  struct tm utc;
  gmtime_r(&secs, &utc);
  char buf[96];  // room for any int the format could print
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", utc.tm_year + 1900,
                utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec,
                static_cast<int>(ms.count() % 1000));
  return buf;
}

// One JSON object per record. The message is escaped by the JSON library, so
// quotes and newlines in it (error texts, prompts in debug logs) cannot break
// the line structure.
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    nlohmann::ordered_json j;
    j["time"] = Rfc3339(msg.time);
    const auto level = spdlog::level::to_string_view(msg.level);
    j["level"] = std::string(level.data(), level.size());
    j["thread"] = msg.thread_id;
    j["msg"] = std::string(msg.payload.data(), msg.payload.size());
    // Invalid UTF-8 in a message becomes U+FFFD instead of an exception.
    const std::string line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    dest.append(line.data(), line.data() + line.size());
    dest.push_back('\n');
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

}  // namespace

absl::Status ConfigureLogging(const std::string& level, const std::string& format) {
  static constexpr const char* kLevels[] = {"trace", "debug",    "info", "warn",
                                            "error", "critical", "off"};
  bool known = false;
  for (const char* l : kLevels) known = known || level == l;
  if (!known) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown log level '", level, "': use trace, debug, info, warn, error, critical or off"));
  }
  std::shared_ptr<spdlog::logger> logger = spdlog::default_logger();
  if (format == "json") {
    logger->set_formatter(std::make_unique<JsonFormatter>());
  } else if (format == "text") {
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e [%^%l%$] %v");
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown log format '", format, "': use text or json"));
  }
  logger->set_level(spdlog::level::from_str(level));
  return absl::OkStatus();
}

}  // namespace m40llm
