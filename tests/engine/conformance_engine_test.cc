// Conformance of the CPU reference engine with llama.cpp on every fixture
// model and prompt (the checks: tests/support/conformance.h).
#include <map>
#include <memory>
#include <string>

#include "engine/cpu_backend.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/support/conformance.h"
#include "tests/support/test_support.h"

namespace m40llm {
namespace {

using testing::ConformanceCases;

struct Loaded {
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<CpuBackend> backend;
};

// Models are loaded once per process and shared by that model's prompts.
Loaded* Load(const std::string& dir, const std::string& stem) {
  static std::map<std::string, std::unique_ptr<Loaded>> cache;
  auto& slot = cache[stem];
  if (slot) return slot.get();
  auto l = std::make_unique<Loaded>();
  auto f = GgufFile::Open(dir + "/models/" + stem + ".gguf");
  if (!f.ok()) {
    ADD_FAILURE() << f.status();
    return nullptr;
  }
  l->file = std::move(*f);
  auto t = Tokenizer::FromGguf(*l->file);
  if (!t.ok()) {
    ADD_FAILURE() << t.status();
    return nullptr;
  }
  l->tok = std::move(*t);
  auto m = LlamaModel::Load(*l->file);
  if (!m.ok()) {
    ADD_FAILURE() << m.status();
    return nullptr;
  }
  l->model = std::move(*m);
  BackendOptions o;
  o.max_slots = 1;
  o.ctx_per_slot = testing::kConformanceContext;
  auto b = CpuBackend::Create(l->model.get(), o);
  if (!b.ok()) {
    ADD_FAILURE() << b.status();
    return nullptr;
  }
  l->backend = std::move(*b);
  slot = std::move(l);
  return slot.get();
}

class EngineConformance : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(EngineConformance, MatchesLlamaCpp) {
  M40_REQUIRE_FIXTURES(dir);
  const testing::ConformanceCase& c = ConformanceCases()[std::get<0>(GetParam())];
  Loaded* l = Load(dir, c.model);
  ASSERT_NE(l, nullptr);
  testing::CheckConformance(*l->backend, *l->tok, dir, c, std::get<1>(GetParam()));
}

INSTANTIATE_TEST_SUITE_P(
    AllModels, EngineConformance,
    ::testing::Combine(::testing::Range(0, static_cast<int>(ConformanceCases().size())),
                       ::testing::Range(0, testing::kConformancePrompts)),
    [](const auto& info) {
      return testing::ConformanceName(std::get<0>(info.param), std::get<1>(info.param));
    });

}  // namespace
}  // namespace m40llm
