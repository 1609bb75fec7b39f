// A device fault under the CUDA backend: the forward pass that hits it and
// every later one fail with INTERNAL, health() reports it, the scheduler
// fails the requests in flight with INTERNAL and refuses new ones with
// UNAVAILABLE, and the process carries on. Each test faults its own CUDA
// context, so ctest runs each in its own process (gtest_discover_tests).
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/cuda_backend.h"
#include "engine/demo_model.h"
#include "engine/scheduler.h"
#include "engine/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/support/host_scheduler.h"
#include "tests/support/stream_collector.h"
#include "tests/support/test_support.h"

namespace m40llm {
namespace {

struct Model {
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<CudaBackend> backend;
};

void Make(int fault_after, int slots, Model* m) {
  RandomModelSpec s;
  s.n_embd = 64;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_head_kv = 2;
  s.n_ff = 96;
  s.n_ctx = 256;
  const std::string path = m40llm::testing::TempDir() + "/fault.gguf";
  M40_ASSERT_OK(WriteRandomLlama(s, path));
  M40_ASSERT_OK_AND_ASSIGN(m->file, GgufFile::Open(path));
  CudaBackendOptions o;
  o.base.max_slots = slots;
  o.base.ctx_per_slot = 256;
  o.fault_after_passes = fault_after;
  M40_ASSERT_OK_AND_ASSIGN(m->backend, CudaBackend::Create(*m->file, o));
}

TEST(CudaFault, ForwardFailsWithInternalAndHealthReportsIt) {
  M40_REQUIRE_CUDA_DEVICE();
  Model m;
  Make(/*fault_after=*/2, 1, &m);
  if (HasFatalFailure()) return;
  std::vector<int32_t> t = {5, 6, 7};
  ForwardOutput out;
  SeqChunk c{0, 0, t, false};
  M40_ASSERT_OK(m.backend->Forward({&c, 1}, &out));
  SeqChunk d{0, 3, {t.data(), 1}, false};
  M40_ASSERT_OK(m.backend->Forward({&d, 1}, &out));
  EXPECT_TRUE(m.backend->health().ok());
  SeqChunk e{0, 4, {t.data(), 1}, false};
  const absl::Status s = m.backend->Forward({&e, 1}, &out);  // the third pass traps
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_NE(s.message().find("GPU faulted"), std::string::npos) << s;
  EXPECT_EQ(m.backend->health().code(), absl::StatusCode::kInternal);
  SeqChunk f{0, 5, {t.data(), 1}, false};
  EXPECT_EQ(m.backend->Forward({&f, 1}, &out).code(), absl::StatusCode::kInternal);
}

using testing::Collector;

TEST(CudaFault, SchedulerFailsRequestsInFlightAndRefusesNewOnes) {
  M40_REQUIRE_CUDA_DEVICE();
  Model m;
  Make(/*fault_after=*/6, 4, &m);
  if (HasFatalFailure()) return;
  M40_ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::FromGguf(*m.file));
  SchedulerOptions so;
  so.max_batch = 4;
  so.ctx_per_slot = 256;
  so.queue_size = 8;
  M40_ASSERT_OK_AND_ASSIGN(auto sched, testing::MakeHostScheduler(m.backend.get(), tok.get(), so, nullptr));
  std::vector<std::shared_ptr<Collector>> cs;
  for (int i = 0; i < 3; ++i) {
    GenerateRequest r;
    r.id = "r" + std::to_string(i);
    r.prompt = tok->Encode("hello there " + std::to_string(i), true, false);
    r.max_tokens = 100;
    r.ignore_eos = true;
    cs.push_back(std::make_shared<Collector>());
    M40_ASSERT_OK(sched->Submit(r, cs.back()).status());
  }
  for (auto& c : cs) {
    ASSERT_TRUE(c->Wait());
    EXPECT_EQ(c->status.code(), absl::StatusCode::kInternal) << c->status;
    EXPECT_LT(c->tokens.size(), 100u);
  }
  EXPECT_EQ(m.backend->health().code(), absl::StatusCode::kInternal);
  GenerateRequest r;
  r.id = "after";
  r.prompt = tok->Encode("more", true, false);
  r.max_tokens = 4;
  const auto h = sched->Submit(r, std::make_shared<Collector>());
  EXPECT_EQ(h.status().code(), absl::StatusCode::kUnavailable) << h.status();
  sched->Shutdown();
}

}  // namespace
}  // namespace m40llm
