// libFuzzer target for the GGUF reader. Parses the input with
// GgufFile::FromBuffer and, when the reader accepts it, reads every metadata
// value and every tensor byte, so that a range the validation missed shows up
// under ASan; also traps when an error message lacks the file name and offset
// or an accepted file breaks an invariant the accessors rely on.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "engine/gguf.h"

namespace {

constexpr std::string_view kName = "fuzz.gguf";

// Folds every byte reachable from `v` into a checksum.
uint64_t Touch(const m40llm::GgufValue& v) {
  using m40llm::GgufValueType;
  uint64_t sum =
      v.u ^ static_cast<uint64_t>(v.i) ^ static_cast<uint64_t>(v.f != 0);
  for (char ch : v.str) sum += static_cast<uint8_t>(ch);
  if (v.type != GgufValueType::kArray) return sum;
  if (v.elem_type == GgufValueType::kString) {
    if (v.strings.size() != v.count) __builtin_trap();
    for (std::string_view s : v.strings) {
      for (char ch : s) sum += static_cast<uint8_t>(ch);
    }
  } else if (v.elem_type == GgufValueType::kArray) {
    if (v.items.size() != v.count) __builtin_trap();
    for (const m40llm::GgufValue& item : v.items) sum += Touch(item);
  } else {
    for (uint64_t k = 0; k < v.count; ++k) {
      sum += static_cast<uint64_t>(v.IntAt(k));
      sum += v.NumberAt(k) > 0 ? 1 : 0;
    }
  }
  return sum;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = m40llm::GgufFile::FromBuffer(std::string(kName), data, size);
  if (!file.ok()) {
    // Every parse error names the file and the offset it stopped at.
    const auto m = file.status().message();
    const std::string_view msg(m.data(), m.size());
    if (msg.substr(0, kName.size() + 9) != "fuzz.gguf: offset ")
      __builtin_trap();
    return 0;
  }
  const m40llm::GgufFile& f = **file;
  volatile uint64_t sink = 0;
  for (const m40llm::GgufKV& kv : f.metadata()) {
    if (f.Find(kv.key) != &kv.value) __builtin_trap();  // keys are unique
    sink = sink + Touch(kv.value);
    sink = sink + f.GetString(kv.key).ok() + f.GetUint(kv.key).ok() +
           f.GetInt(kv.key).ok() + f.GetFloat(kv.key).ok() +
           f.GetBool(kv.key).ok();
  }
  const uint64_t alignment = f.alignment();
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) __builtin_trap();
  for (const m40llm::GgufTensorInfo& t : f.tensors()) {
    if (f.FindTensor(t.name) != &t) __builtin_trap();  // names are unique
    if (t.offset % alignment != 0 || t.offset < f.data_offset() ||
        t.offset > size || t.n_bytes > size - t.offset || t.n_elements == 0) {
      __builtin_trap();
    }
    uint64_t sum = 0;
    for (uint8_t b : f.TensorData(t)) sum += b;
    sink = sink + sum + t.rows();
  }
  (void)sink;
  return 0;
}
