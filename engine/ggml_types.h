// Tensor element types as GGUF stores them (the ggml type ids), with their
// block geometry. The ids are on-disk values: never renumber.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace m40llm {

enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  // 4 and 5 were Q4_2 / Q4_3, removed from ggml long ago.
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  // 31..33 were the Q4_0_4_4 / 4_8 / 8_8 repacks, removed.
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  // 36..38 were the IQ4_NL repacks, removed.
  kMXFP4 = 39,
};

// Geometry of one type: `block_elems` values are stored in `block_bytes`.
struct GgmlTypeTraits {
  std::string_view name;
  uint32_t block_elems;
  uint32_t block_bytes;
};

// Traits of a known type id, or nullopt for an id ggml never assigned or has
// removed. Every id that returns a value is a type a valid GGUF may contain.
std::optional<GgmlTypeTraits> TypeTraits(uint32_t type_id);

// The type's name ("Q4_K"), or "type#<id>" when unknown.
std::string TypeName(uint32_t type_id);

inline std::string TypeName(GgmlType t) {
  return TypeName(static_cast<uint32_t>(t));
}

// True for the weight types m40llm loads: F32, F16, BF16 and the block types
// below.
bool IsSupportedWeightType(GgmlType t);

// True for the block-quantised types m40llm computes from as they are (with
// --weights native): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K.
bool IsBlockQuantised(GgmlType t);

}  // namespace m40llm
