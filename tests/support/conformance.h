// The engine conformance check against llama.cpp's reference outputs, shared
// by the CPU engine's test (tests/engine) and the CUDA engine's (tests/cuda):
// for one fixture model and prompt, the tokenization, the last-position
// logits (relative L2), the argmax at every confident prompt position, and
// the greedy continuation up to the first step where llama.cpp was unsure.
#pragma once

#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/tokenizer.h"

namespace m40llm::testing {

struct ConformanceCase {
  std::string model;  // file stem under models/
  double max_rel_l2;  // last_logits tolerance
  double margin;      // compare tokens only where llama.cpp's margin >= this
};

// Every fixture model with the foundation issue's thresholds: f16 2e-3 /
// 0.05, bf16 1e-2 / 0.1, quantised 3e-2 / 0.5; stories260k (a real trained
// model, F32 weights stored as FP16) under the f16 ones.
const std::vector<ConformanceCase>& ConformanceCases();
inline constexpr int kConformancePrompts = 4;
// Positions a backend under test needs: the longest prompt (stories260k's
// tokenizer makes 275 tokens of prompt 2) plus 32 greedy steps.
inline constexpr int kConformanceContext = 512;

// Checks `backend` (slot 0, at least kConformanceContext positions) and `tok` on prompt
// `prompt` of case `c`, with gtest assertions; `dir` is the fixtures folder.
// Prints one "[ figures  ]" line with the measured numbers.
void CheckConformance(Backend& backend, const Tokenizer& tok, const std::string& dir,
                      const ConformanceCase& c, int prompt);

// A gtest-safe test name for (case, prompt).
std::string ConformanceName(int case_index, int prompt);

}  // namespace m40llm::testing
