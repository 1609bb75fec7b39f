// CheckConformance (see conformance.h).
#include "tests/support/conformance.h"

#include <cctype>
#include <cstdio>
#include <fstream>

#include "engine/eval.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_support.h"

namespace m40llm::testing {

const std::vector<ConformanceCase>& ConformanceCases() {
  static const std::vector<ConformanceCase> cases = {
      {"tiny-llama-f16", 2e-3, 0.05},     {"tiny-llama-bf16", 1e-2, 0.1},
      {"tiny-llama-q8_0", 3e-2, 0.5},     {"tiny-llama-q4_0", 3e-2, 0.5},
      {"tiny-llama-q4_k_m", 3e-2, 0.5},   {"tiny-llama-q5_k_m", 3e-2, 0.5},
      {"tiny-llama-q6_k", 3e-2, 0.5},     {"tiny-llama-tied-q8_0", 3e-2, 0.5},
      // A real trained model: F32 in the file, FP16 in our storage.
      {"stories260k", 2e-3, 0.05},
      // qwen2: Q/K/V biases, NeoX RoPE, tied output, the qwen2 pre-tokenizer.
      {"tiny-qwen2-f16", 2e-3, 0.05},
  };
  return cases;
}

std::string ConformanceName(int case_index, int prompt) {
  std::string n = ConformanceCases()[case_index].model + "_p" + std::to_string(prompt);
  for (char& ch : n) {
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return n;
}

void CheckConformance(Backend& backend, const Tokenizer& tok, const std::string& dir,
                      const ConformanceCase& c, int p) {
  const std::string ref_path =
      dir + "/reference/" + c.model + ".p" + std::to_string(p) + ".json";
  std::ifstream in(ref_path);
  ASSERT_TRUE(in) << "cannot read " << ref_path;
  const nlohmann::json ref = nlohmann::json::parse(in);

  // Tokenization (BOS added, special tokens parsed) must match exactly.
  const std::vector<int32_t> want_tokens = ref["prompt_tokens"].get<std::vector<int32_t>>();
  const std::vector<int32_t> got_tokens =
      tok.Encode(ref["prompt"].get<std::string>(), /*add_special=*/true, /*parse_special=*/true);
  EXPECT_EQ(got_tokens, want_tokens);

  const int n_greedy = static_cast<int>(ref["greedy"].size());
  auto r = RunGreedyEval(backend, want_tokens, n_greedy);
  ASSERT_TRUE(r.ok()) << r.status();

  // Last-position logits.
  const std::vector<float> want_logits = ref["last_logits"].get<std::vector<float>>();
  ASSERT_EQ(r->last_logits.size(), want_logits.size());
  const double rel = RelL2(r->last_logits.data(), want_logits.data(), want_logits.size());
  EXPECT_LE(rel, c.max_rel_l2);

  // Argmax at every prompt position where llama.cpp was confident.
  int checked = 0, agreed = 0;
  const auto& top1 = ref["prompt_top1"];
  ASSERT_EQ(top1.size(), r->prompt_top1.size());
  for (size_t i = 0; i < top1.size(); ++i) {
    if (top1[i]["margin"].get<double>() < c.margin) continue;
    ++checked;
    const int want = top1[i]["token"].get<int>();
    if (r->prompt_top1[i].token == want) {
      ++agreed;
    } else {
      ADD_FAILURE() << "prompt position " << i << ": argmax " << r->prompt_top1[i].token
                    << ", llama.cpp " << want << " (margin " << top1[i]["margin"] << ")";
    }
  }

  // Greedy continuation up to the first step where llama.cpp's margin < m.
  int greedy_checked = 0;
  const auto& greedy = ref["greedy"];
  ASSERT_EQ(static_cast<int>(r->greedy.size()), n_greedy);
  for (int s = 0; s < n_greedy; ++s) {
    if (greedy[s]["margin"].get<double>() < c.margin) break;
    ASSERT_EQ(r->greedy[s].token, greedy[s]["token"].get<int>()) << "greedy step " << s;
    ++greedy_checked;
  }
  std::printf("[ figures  ] %-22s p%d  rel_l2 %.2e (limit %.0e)  argmax %d/%d  greedy %d/%d\n",
              c.model.c_str(), p, rel, c.max_rel_l2, agreed, checked, greedy_checked, n_greedy);
}

}  // namespace m40llm::testing
