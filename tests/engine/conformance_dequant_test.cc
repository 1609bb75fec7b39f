// Conformance: our float32 dequantisation of tensors in the fixture models is
// bit-identical to llama.cpp's (reference/dequant/*.f32, listed in index.json).
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/dequant.h"
#include "engine/ggml_types.h"
#include "engine/gguf.h"
#include "gtest/gtest.h"
#include "tests/support/test_support.h"

namespace m40llm {
namespace {

TEST(ConformanceDequantTest, MatchesLlamaCppBitForBit) {
  M40_REQUIRE_FIXTURES(dir);
  const std::string ref_dir = dir + "/reference/dequant";
  const std::string index_text =
      testing::ReadFileOrFail(ref_dir + "/index.json");
  ASSERT_FALSE(index_text.empty());
  const nlohmann::json index = nlohmann::json::parse(index_text);
  ASSERT_TRUE(index.is_object());

  size_t checked = 0;
  for (const auto& [file, entry] : index.items()) {
    SCOPED_TRACE(file);
    const std::string model_path =
        dir + "/models/" + entry.at("model").get<std::string>();
    const std::string tensor = entry.at("tensor").get<std::string>();
    const size_t values = entry.at("values").get<size_t>();

    auto gguf = GgufFile::Open(model_path);
    ASSERT_TRUE(gguf.ok()) << gguf.status();
    const GgufTensorInfo* info = (*gguf)->FindTensor(tensor);
    ASSERT_NE(info, nullptr) << "no tensor " << tensor << " in " << model_path;
    EXPECT_EQ(TypeName(info->type), entry.at("type").get<std::string>());
    ASSERT_LE(values, info->n_elements);

    const std::string expected = testing::ReadFileOrFail(ref_dir + "/" + file);
    ASSERT_EQ(expected.size(), values * sizeof(float));

    std::vector<float> got(values);
    const absl::Status s = DequantizeToF32(
        info->type, (*gguf)->TensorData(*info).data(), values, got.data());
    ASSERT_TRUE(s.ok()) << s;
    if (std::memcmp(got.data(), expected.data(), expected.size()) != 0) {
      for (size_t i = 0; i < values; ++i) {
        float want;
        std::memcpy(&want, expected.data() + i * sizeof(float), sizeof(want));
        if (std::memcmp(&got[i], &want, sizeof(want)) != 0) {
          FAIL() << TypeName(info->type) << " " << tensor
                 << ": first difference at value " << i << ": got " << got[i]
                 << ", llama.cpp " << want;
        }
      }
    }
    ++checked;
  }
  std::printf("checked %zu dequantised tensors bit-exact against llama.cpp\n",
              checked);
  EXPECT_GT(checked, 0u);
}

}  // namespace
}  // namespace m40llm
