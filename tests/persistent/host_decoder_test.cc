// The host decoder on the CPU reference backend: the command -> event
// conformance suite, plus what only a host decoder over a Backend shows
// (a failing forward pass ends the active sequences with kError and the
// decoder goes on) and its argument checks.
#include "persistent/host_decoder.h"

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "engine/cpu_backend.h"
#include "engine/demo_model.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "gtest/gtest.h"
#include "tests/persistent/decoder_conformance.h"
#include "tests/support/test_support.h"

namespace m40llm::testing {
namespace {

// A backend that runs another one and fails ForwardSample while `fail` is set.
class FailingBackend final : public Backend {
 public:
  explicit FailingBackend(Backend* inner) : inner_(inner) {}
  const ModelConfig& config() const override { return inner_->config(); }
  const BackendOptions& options() const override { return inner_->options(); }
  std::string name() const override { return "failing"; }
  absl::Status Forward(std::span<const SeqChunk> batch, ForwardOutput* out) override {
    return inner_->Forward(batch, out);
  }
  absl::Status ForwardSample(std::span<const SeqChunk> batch, std::span<const SampleSpec> specs,
                             std::vector<SampleResult>* out) override {
    if (fail) return absl::InternalError("injected forward failure");
    return inner_->ForwardSample(batch, specs, out);
  }
  std::atomic<bool> fail{false};

 private:
  Backend* inner_;
};

struct CpuModel {
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<CpuBackend> backend;
  std::unique_ptr<FailingBackend> failing;
  DecoderTarget target;
};

// A small random model on the CPU backend, with kSuiteSlots + 1 slots.
CpuModel* Model() {
  static CpuModel* m = [] {
    auto* m = new CpuModel;
    RandomModelSpec spec;
    spec.n_embd = 64;
    spec.n_layer = 2;
    spec.n_head = 4;
    spec.n_head_kv = 2;
    spec.n_ff = 96;
    spec.n_ctx = kSuiteContext;
    spec.seed = 33;
    const std::string path = TempDir() + "/host_decoder.gguf";
    const absl::Status w = WriteRandomLlama(spec, path);
    if (!w.ok()) {
      m->target.skip_reason = std::string("cannot write the model: ") + std::string(w.message());
      return m;
    }
    auto f = GgufFile::Open(path);
    if (!f.ok()) {
      m->target.skip_reason = std::string(f.status().message());
      return m;
    }
    m->file = std::move(*f);
    auto model = LlamaModel::Load(*m->file);
    if (!model.ok()) {
      m->target.skip_reason = std::string(model.status().message());
      return m;
    }
    m->model = std::move(*model);
    BackendOptions o;
    o.max_slots = kSuiteSlots + 1;
    o.ctx_per_slot = kSuiteContext;
    o.n_threads = 2;
    auto b = CpuBackend::Create(m->model.get(), o);
    if (!b.ok()) {
      m->target.skip_reason = std::string(b.status().message());
      return m;
    }
    m->backend = std::move(*b);
    m->failing = std::make_unique<FailingBackend>(m->backend.get());
    UseHostDecoder(m->failing.get(), &m->target);
    return m;
  }();
  return m;
}

DecoderTarget* HostOnCpu() { return &Model()->target; }

INSTANTIATE_TEST_SUITE_P(HostOnCpu, DecoderConformance, ::testing::Values(&HostOnCpu));

TEST(HostDecoder, AFailedStepEndsTheActiveSequencesWithErrorAndTheDecoderGoesOn) {
  CpuModel* m = Model();
  ASSERT_TRUE(m->target.skip_reason.empty()) << m->target.skip_reason;
  DecoderOptions o;
  o.max_slots = kSuiteSlots;
  o.ctx_per_slot = kSuiteContext;
  DecoderHarness h(&m->target, o);
  ASSERT_TRUE(h.ok());
  SeqSpec s;
  s.prompt = {5, 6, 7, 8};
  s.params.temperature = 0.0f;
  s.max_tokens = 50;
  s.ignore_eos = true;
  // Failing from the first decode step: both report their first token (it
  // came from prefill), then end with kError.
  m->failing->fail = true;
  const uint64_t a = h.Admit(0, s), b = h.Admit(3, s);
  ASSERT_TRUE(h.WaitFinished(a));
  ASSERT_TRUE(h.WaitFinished(b));
  m->failing->fail = false;
  EXPECT_EQ(h.stream(a).reason, FinishReason::kError);
  EXPECT_EQ(h.stream(b).reason, FinishReason::kError);
  EXPECT_EQ(h.stream(a).tokens.size(), 1u);
  EXPECT_EQ(h.stream(b).tokens.size(), 1u);
  // The slots are free and the decoder still serves.
  s.max_tokens = 6;
  const uint64_t c = h.Admit(0, s);
  ASSERT_TRUE(h.WaitFinished(c));
  ExpectSameStream(h.stream(c), Reference(*m->target.backend, s, {}, kSuiteContext), "after");
}

TEST(HostDecoder, ReportsItsProgress) {
  CpuModel* m = Model();
  ASSERT_TRUE(m->target.skip_reason.empty()) << m->target.skip_reason;
  DecoderOptions o;
  o.max_slots = kSuiteSlots;
  o.ctx_per_slot = kSuiteContext;
  auto d = HostDecoder::Create(m->backend.get(), o);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ((*d)->progress().steps, 0u);
  EXPECT_EQ((*d)->progress().active_slots, 0);
  EXPECT_EQ((*d)->kind(), "host");
  ASSERT_TRUE((*d)->Start().ok());
  // Admit one sequence of 9 tokens by hand: 8 decode steps.
  SeqSpec s;
  s.prompt = {3, 4, 5};
  s.params.temperature = 0.0f;
  s.max_tokens = 9;
  s.ignore_eos = true;
  const SampleResult first = PrefillAndSample(*m->backend, 0, s);
  std::vector<int32_t> hist = s.prompt;
  hist.push_back(first.token);
  ASSERT_TRUE((*d)->WriteHistory(0, hist).ok());
  Command c{};
  c.op = CommandOp::kAdmit;
  c.slot = 0;
  c.pos = 3;
  c.first_token = first.token;
  c.seq_id = 7;
  c.sampling.params = s.params;
  c.sampling.max_tokens = 9;
  c.sampling.ignore_eos = 1;
  ASSERT_TRUE((*d)->rings()->commands.PushWait(c, std::chrono::seconds(10)));
  (*d)->Notify();
  Event e{};
  int tokens = 0;
  while ((*d)->rings()->events.PopWait(&e, std::chrono::seconds(10)) &&
         e.kind == EventKind::kToken) {
    ++tokens;
  }
  EXPECT_EQ(tokens, 9);
  EXPECT_EQ(e.kind, EventKind::kFinished);
  EXPECT_EQ((*d)->progress().steps, 8u);
  Command stop{};
  stop.op = CommandOp::kShutdown;
  ASSERT_TRUE((*d)->rings()->commands.PushWait(stop, std::chrono::seconds(10)));
  (*d)->Notify();
  (*d)->Join();
  EXPECT_EQ((*d)->progress().active_slots, 0);
  EXPECT_EQ((*d)->progress().seconds_since_step, 0.0);
}

TEST(HostDecoder, RefusesOptionsTheBackendCannotHold) {
  CpuModel* m = Model();
  ASSERT_TRUE(m->target.skip_reason.empty()) << m->target.skip_reason;
  DecoderOptions o;
  o.max_slots = kSuiteSlots + 2;  // the backend has kSuiteSlots + 1
  o.ctx_per_slot = kSuiteContext;
  EXPECT_EQ(HostDecoder::Create(m->backend.get(), o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.max_slots = 1;
  o.ctx_per_slot = kSuiteContext + 1;
  EXPECT_EQ(HostDecoder::Create(m->backend.get(), o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.ctx_per_slot = kSuiteContext;
  EXPECT_EQ(HostDecoder::Create(nullptr, o).status().code(), absl::StatusCode::kInvalidArgument);
  auto d = HostDecoder::Create(m->backend.get(), o);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ((*d)->WriteHistory(1, std::vector<int32_t>{1, 2}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*d)->WriteHistory(0, std::vector<int32_t>(kSuiteContext + 1, 1)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*d)->WriteHistory(0, std::vector<int32_t>{1, 2}).ok());
  // Never started: destroying it is fine.
}

TEST(HostDecoder, ADecoderDroppedWhileRunningStops) {
  CpuModel* m = Model();
  ASSERT_TRUE(m->target.skip_reason.empty()) << m->target.skip_reason;
  DecoderOptions o;
  o.max_slots = 2;
  o.ctx_per_slot = kSuiteContext;
  auto d = HostDecoder::Create(m->backend.get(), o);
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_TRUE((*d)->Start().ok());
  EXPECT_EQ((*d)->Start().code(), absl::StatusCode::kFailedPrecondition);
  d->reset();  // must return: the destructor shuts the thread down
}

}  // namespace
}  // namespace m40llm::testing
