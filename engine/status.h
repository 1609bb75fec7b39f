// Status helpers for fallible host code (absl::Status / absl::StatusOr).
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define M40_CONCAT_INNER_(a, b) a##b
#define M40_CONCAT_(a, b) M40_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function when `expr` is not OK.
#define RETURN_IF_ERROR(expr)                     \
  do {                                            \
    ::absl::Status m40_status_ = (expr);          \
    if (!m40_status_.ok()) return m40_status_;    \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, MakeX());` unwraps a StatusOr or returns its error.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  M40_ASSIGN_OR_RETURN_IMPL_(M40_CONCAT_(m40_statusor_, __LINE__), lhs, rexpr)

#define M40_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                               \
  if (!tmp.ok()) return std::move(tmp).status();    \
  lhs = std::move(tmp).value()

#include <string_view>

#include "absl/strings/string_view.h"

namespace m40llm {
// Debian's abseil is built with its own absl::string_view, which StrCat's
// AlphaNum does not build from std::string_view; this adapts one.
inline absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }
}  // namespace m40llm
