// Block geometry of the ggml tensor types (sizes from the public GGUF spec).
#include "engine/ggml_types.h"

#include <string>

namespace m40llm {
namespace {

struct Entry {
  uint32_t id;
  GgmlTypeTraits traits;
};

// QK_K super-blocks are 256 values; the legacy quants use 32-value blocks.
constexpr Entry kTypes[] = {
    {0, {"F32", 1, 4}},          {1, {"F16", 1, 2}},
    {2, {"Q4_0", 32, 18}},       {3, {"Q4_1", 32, 20}},
    {6, {"Q5_0", 32, 22}},       {7, {"Q5_1", 32, 24}},
    {8, {"Q8_0", 32, 34}},       {9, {"Q8_1", 32, 36}},
    {10, {"Q2_K", 256, 84}},     {11, {"Q3_K", 256, 110}},
    {12, {"Q4_K", 256, 144}},    {13, {"Q5_K", 256, 176}},
    {14, {"Q6_K", 256, 210}},    {15, {"Q8_K", 256, 292}},
    {16, {"IQ2_XXS", 256, 66}},  {17, {"IQ2_XS", 256, 74}},
    {18, {"IQ3_XXS", 256, 98}},  {19, {"IQ1_S", 256, 50}},
    {20, {"IQ4_NL", 32, 18}},    {21, {"IQ3_S", 256, 110}},
    {22, {"IQ2_S", 256, 82}},    {23, {"IQ4_XS", 256, 136}},
    {24, {"I8", 1, 1}},          {25, {"I16", 1, 2}},
    {26, {"I32", 1, 4}},         {27, {"I64", 1, 8}},
    {28, {"F64", 1, 8}},         {29, {"IQ1_M", 256, 56}},
    {30, {"BF16", 1, 2}},        {34, {"TQ1_0", 256, 54}},
    {35, {"TQ2_0", 256, 66}},    {39, {"MXFP4", 32, 17}},
};

}  // namespace

std::optional<GgmlTypeTraits> TypeTraits(uint32_t type_id) {
  for (const Entry& e : kTypes) {
    if (e.id == type_id) return e.traits;
  }
  return std::nullopt;
}

std::string TypeName(uint32_t type_id) {
  if (auto t = TypeTraits(type_id)) return std::string(t->name);
  return "type#" + std::to_string(type_id);
}

bool IsBlockQuantised(GgmlType t) {
  return IsSupportedWeightType(t) && t != GgmlType::kF32 && t != GgmlType::kF16 &&
         t != GgmlType::kBF16;
}

bool IsSupportedWeightType(GgmlType t) {
  switch (t) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kQ8_0:
    case GgmlType::kQ2_K:
    case GgmlType::kQ3_K:
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K:
      return true;
    default:
      return false;
  }
}

}  // namespace m40llm
