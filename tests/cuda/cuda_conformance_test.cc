// Conformance of the CUDA engine with llama.cpp on every fixture model and
// prompt: the same checks and thresholds as the CPU engine's
// (tests/support/conformance.h). Label gpu: it needs a device and the
// fixtures, and skips, saying which is missing, without either.
#include <map>
#include <memory>
#include <string>

#include "cuda/cuda_backend.h"
#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/support/conformance.h"
#include "tests/support/test_support.h"

namespace m40llm {
namespace {

using testing::ConformanceCases;

struct Loaded {
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<CudaBackend> backend;
};

// Models are loaded once per process and shared by that model's prompts.
absl::StatusOr<Loaded*> Load(const std::string& dir, const std::string& stem) {
  static std::map<std::string, std::unique_ptr<Loaded>> cache;
  auto& slot = cache[stem];
  if (slot) return slot.get();
  auto l = std::make_unique<Loaded>();
  ASSIGN_OR_RETURN(l->file, GgufFile::Open(dir + "/models/" + stem + ".gguf"));
  ASSIGN_OR_RETURN(l->tok, Tokenizer::FromGguf(*l->file));
  CudaBackendOptions o;
  o.base.max_slots = 1;
  o.base.ctx_per_slot = testing::kConformanceContext;
  ASSIGN_OR_RETURN(l->backend, CudaBackend::Create(*l->file, o));
  slot = std::move(l);
  return slot.get();
}

class CudaConformance : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(CudaConformance, MatchesLlamaCpp) {
  M40_REQUIRE_CUDA_DEVICE();
  M40_REQUIRE_FIXTURES(dir);
  const testing::ConformanceCase& c = ConformanceCases()[std::get<0>(GetParam())];
  M40_ASSERT_OK_AND_ASSIGN(Loaded * l, Load(dir, c.model));
  testing::CheckConformance(*l->backend, *l->tok, dir, c, std::get<1>(GetParam()));
}

INSTANTIATE_TEST_SUITE_P(
    AllModels, CudaConformance,
    ::testing::Combine(::testing::Range(0, static_cast<int>(ConformanceCases().size())),
                       ::testing::Range(0, testing::kConformancePrompts)),
    [](const auto& info) {
      return testing::ConformanceName(std::get<0>(info.param), std::get<1>(info.param));
    });

}  // namespace
}  // namespace m40llm
