// The scheduler with the host decoder behind the ring protocol, on a small
// random model: exact tokens against a plain sequential reference, batch
// independence, continuous batching, queue limits, cancellation, deadlines,
// stop strings, drain and shutdown.
#include "engine/scheduler.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/cpu_backend.h"
#include "engine/demo_model.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/tokenizer.h"
#include "gtest/gtest.h"
#include "persistent/config.h"
#include "persistent/decoder.h"
#include "persistent/ring.h"
#include "tests/support/host_scheduler.h"
#include "tests/support/stream_collector.h"
#include "tests/support/test_support.h"

namespace m40llm {
namespace {

using namespace std::chrono_literals;
using testing::Collector;

// Collects one request's stream and waits for its end.

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    RandomModelSpec spec;
    spec.n_embd = 64;
    spec.n_layer = 2;
    spec.n_head = 4;
    spec.n_head_kv = 2;
    spec.n_ff = 96;
    spec.n_ctx = 256;
    spec.seed = 21;
    const std::string path = testing::TempDir() + "/sched.gguf";
    ASSERT_TRUE(WriteRandomLlama(spec, path).ok());
    auto f = GgufFile::Open(path);
    ASSERT_TRUE(f.ok());
    file_ = std::move(*f);
    auto t = Tokenizer::FromGguf(*file_);
    ASSERT_TRUE(t.ok());
    tok_ = std::move(*t);
    auto m = LlamaModel::Load(*file_);
    ASSERT_TRUE(m.ok());
    model_ = std::move(*m);
  }

  std::unique_ptr<Scheduler> Make(int max_batch, int ctx, int queue) {
    BackendOptions bo;
    bo.max_slots = max_batch;
    bo.ctx_per_slot = ctx;
    auto b = CpuBackend::Create(model_.get(), bo);
    EXPECT_TRUE(b.ok());
    backend_ = std::move(*b);
    SchedulerOptions so;
    so.max_batch = max_batch;
    so.ctx_per_slot = ctx;
    so.queue_size = queue;
    auto s = testing::MakeHostScheduler(backend_.get(), tok_.get(), so, nullptr);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }

  // The plain sequential reference: prefill, sample token 0, then feed each
  // token and sample the next, with the same (seed, stream 0, step) draws
  // and penalties over prompt + generated tokens. Stops at EOS unless
  // ignore_eos.
  std::vector<int32_t> Reference(const GenerateRequest& req) {
    BackendOptions bo;
    bo.max_slots = 1;
    bo.ctx_per_slot = 256;
    auto b = CpuBackend::Create(model_.get(), bo);
    EXPECT_TRUE(b.ok());
    ForwardOutput out;
    SeqChunk pre{0, 0, req.prompt, false};
    EXPECT_TRUE((*b)->Forward({&pre, 1}, &out).ok());
    std::vector<int32_t> hist = req.prompt, gen;
    for (int step = 0; step < req.max_tokens; ++step) {
      const SampleResult r = Sample(out.logits, req.sampling, hist, 0, step, nullptr);
      if (!req.ignore_eos && tok_->IsEog(r.token)) break;
      gen.push_back(r.token);
      hist.push_back(r.token);
      SeqChunk dec{0, static_cast<int>(hist.size()) - 1, {&hist.back(), 1}, false};
      EXPECT_TRUE((*b)->Forward({&dec, 1}, &out).ok());
    }
    return gen;
  }

  // The text a stream of these tokens carries (UTF-8-safe, as the
  // incremental detokenizer emits it).
  std::string StreamText(const std::vector<int32_t>& toks) {
    IncrementalDetokenizer d(*tok_);
    std::string t;
    for (int32_t id : toks) t += d.Push(id);
    return t + d.Flush();
  }

  GenerateRequest Req(uint64_t seed, int max_tokens, float temperature = 0.9f) {
    GenerateRequest r;
    r.id = "r" + std::to_string(seed);
    r.prompt = tok_->Encode("the quick brown fox " + std::to_string(seed), true, false);
    r.sampling.temperature = temperature;
    r.sampling.top_k = 40;
    r.sampling.seed = seed;
    r.sampling.repetition_penalty = 1.1f;
    r.max_tokens = max_tokens;
    r.ignore_eos = true;
    return r;
  }

  std::unique_ptr<GgufFile> file_;
  std::unique_ptr<Tokenizer> tok_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<CpuBackend> backend_;
};

TEST_F(SchedulerTest, SingleRequestMatchesSequentialReference) {
  auto s = Make(4, 128, 8);
  ASSERT_NE(s, nullptr);
  GenerateRequest req = Req(7, 20);
  const auto want = Reference(req);
  auto c = std::make_shared<Collector>();
  ASSERT_TRUE(s->Submit(req, c).ok());
  ASSERT_TRUE(c->Wait());
  EXPECT_TRUE(c->status.ok()) << c->status;
  EXPECT_EQ(c->info.reason, StreamFinish::kLength);
  EXPECT_EQ(c->tokens, want);
  EXPECT_EQ(c->info.completion_tokens, 20);
  EXPECT_EQ(c->info.prompt_tokens, static_cast<int>(req.prompt.size()));
  EXPECT_EQ(c->text, StreamText(want));
  s->Shutdown();
}

TEST_F(SchedulerTest, ConcurrentRequestsGiveTheirSoloTokens) {
  // 24 requests over 6 slots with different seeds and lengths: sequences join
  // and leave mid-flight, and each must produce exactly its solo tokens.
  auto s = Make(6, 128, 64);
  ASSERT_NE(s, nullptr);
  std::vector<GenerateRequest> reqs;
  std::vector<std::shared_ptr<Collector>> cs;
  for (int i = 0; i < 24; ++i) {
    reqs.push_back(Req(100 + i, 3 + (i * 7) % 17, i % 3 == 0 ? 0.0f : 0.8f));
    cs.push_back(std::make_shared<Collector>());
    ASSERT_TRUE(s->Submit(reqs.back(), cs.back()).ok());
  }
  for (int i = 0; i < 24; ++i) {
    ASSERT_TRUE(cs[i]->Wait()) << i;
    EXPECT_TRUE(cs[i]->status.ok()) << cs[i]->status;
    EXPECT_EQ(static_cast<int>(cs[i]->tokens.size()), reqs[i].max_tokens) << i;
    EXPECT_EQ(cs[i]->tokens, Reference(reqs[i])) << "request " << i;
  }
  EXPECT_GT(s->stats().decode_steps, 0u);
  EXPECT_EQ(s->stats().active_sequences, 0);
  s->Shutdown();
}

TEST_F(SchedulerTest, FullQueueIsResourceExhausted) {
  auto s = Make(1, 128, 2);
  ASSERT_NE(s, nullptr);
  std::vector<std::shared_ptr<Collector>> cs;
  int accepted = 0, exhausted = 0;
  for (int i = 0; i < 10; ++i) {
    cs.push_back(std::make_shared<Collector>());
    auto h = s->Submit(Req(i, 60), cs.back());
    if (h.ok()) {
      ++accepted;
    } else {
      EXPECT_EQ(h.status().code(), absl::StatusCode::kResourceExhausted) << h.status();
      ++exhausted;
      cs.pop_back();
    }
  }
  EXPECT_GE(exhausted, 1);
  EXPECT_LE(accepted, 3);  // one decoding (or in prefill) + a queue of two
  for (auto& c : cs) {
    ASSERT_TRUE(c->Wait());
    EXPECT_TRUE(c->status.ok());
    EXPECT_EQ(c->tokens.size(), 60u);
  }
  s->Shutdown();
}

TEST_F(SchedulerTest, CancelFreesTheSlotWithinAStep) {
  auto s = Make(2, 256, 4);
  ASSERT_NE(s, nullptr);
  auto c = std::make_shared<Collector>();
  auto h = s->Submit(Req(5, 200), c);
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(c->WaitTokens(3));
  s->Cancel(*h);
  ASSERT_TRUE(c->Wait());
  EXPECT_TRUE(c->status.ok());
  EXPECT_EQ(c->info.reason, StreamFinish::kCancelled);
  EXPECT_LT(c->tokens.size(), 200u);
  EXPECT_TRUE(s->WaitIdle(5s));
  for (int i = 0; i < 200 && s->stats().active_sequences != 0; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(s->stats().active_sequences, 0);
  // The freed slot serves the next request.
  auto c2 = std::make_shared<Collector>();
  ASSERT_TRUE(s->Submit(Req(6, 5), c2).ok());
  ASSERT_TRUE(c2->Wait());
  EXPECT_EQ(c2->tokens, Reference(Req(6, 5)));
  s->Shutdown();
}

TEST_F(SchedulerTest, CancelWhileQueued) {
  auto s = Make(1, 256, 4);
  ASSERT_NE(s, nullptr);
  auto busy = std::make_shared<Collector>();
  auto waiting = std::make_shared<Collector>();
  auto hb = s->Submit(Req(1, 200), busy);
  ASSERT_TRUE(hb.ok());
  ASSERT_TRUE(busy->WaitTokens(1));
  auto hw = s->Submit(Req(2, 10), waiting);
  ASSERT_TRUE(hw.ok());
  s->Cancel(*hw);
  ASSERT_TRUE(waiting->Wait(2s));
  EXPECT_EQ(waiting->info.reason, StreamFinish::kCancelled);
  EXPECT_TRUE(waiting->tokens.empty());
  s->Cancel(*hb);
  ASSERT_TRUE(busy->Wait());
  s->Shutdown();
}

TEST_F(SchedulerTest, DeadlineEndsTheRequest) {
  auto s = Make(1, 1100, 4);
  ASSERT_NE(s, nullptr);
  // Already expired: ends at prefill without a token.
  auto past = std::make_shared<Collector>();
  GenerateRequest r = Req(3, 10);
  r.deadline = std::chrono::steady_clock::now() - 1ms;
  ASSERT_TRUE(s->Submit(r, past).ok());
  ASSERT_TRUE(past->Wait(5s));
  EXPECT_EQ(past->status.code(), absl::StatusCode::kDeadlineExceeded) << past->status;
  EXPECT_TRUE(past->tokens.empty());
  // Expires while queued behind a long request that holds the only slot.
  auto blocker = std::make_shared<Collector>();
  auto hb = s->Submit(Req(4, 1000), blocker);
  ASSERT_TRUE(hb.ok());
  ASSERT_TRUE(blocker->WaitTokens(1));
  auto queued = std::make_shared<Collector>();
  r.deadline = std::chrono::steady_clock::now() + 20ms;
  ASSERT_TRUE(s->Submit(r, queued).ok());
  ASSERT_TRUE(queued->Wait(5s));
  EXPECT_EQ(queued->status.code(), absl::StatusCode::kDeadlineExceeded) << queued->status;
  EXPECT_TRUE(queued->tokens.empty());
  s->Cancel(*hb);
  ASSERT_TRUE(blocker->Wait());
  EXPECT_TRUE(s->WaitIdle(5s));
  s->Shutdown();
}

TEST_F(SchedulerTest, StopStringEndsAndIsNotStreamed) {
  auto s = Make(2, 128, 4);
  ASSERT_NE(s, nullptr);
  // A stop string the reference actually produces: three ASCII letters of
  // its streamed text.
  GenerateRequest r = Req(11, 30, 0.0f);
  const std::string text = StreamText(Reference(r));
  size_t at = std::string::npos;
  for (size_t i = 4; i + 3 <= text.size() && at == std::string::npos; ++i) {
    if (isalpha(text[i]) && isalpha(text[i + 1]) && isalpha(text[i + 2])) at = i;
  }
  ASSERT_NE(at, std::string::npos) << text;
  const std::string stop = text.substr(at, 3);
  at = text.find(stop);
  r.stop = {stop};
  auto c = std::make_shared<Collector>();
  ASSERT_TRUE(s->Submit(r, c).ok());
  ASSERT_TRUE(c->Wait());
  EXPECT_TRUE(c->status.ok());
  EXPECT_EQ(c->info.reason, StreamFinish::kStopSequence);
  EXPECT_EQ(c->text, text.substr(0, at));
  EXPECT_TRUE(s->WaitIdle(5s));
  s->Shutdown();
}

TEST_F(SchedulerTest, RejectsWhatCannotRun) {
  auto s = Make(1, 64, 4);
  ASSERT_NE(s, nullptr);
  auto c = std::make_shared<Collector>();
  GenerateRequest r = Req(1, 60);
  EXPECT_EQ(s->Submit(r, c).status().code(), absl::StatusCode::kOutOfRange);
  r = Req(1, 4);
  r.prompt.push_back(1 << 20);
  EXPECT_EQ(s->Submit(r, c).status().code(), absl::StatusCode::kInvalidArgument);
  r = Req(1, 4);
  r.prompt.clear();
  EXPECT_EQ(s->Submit(r, c).status().code(), absl::StatusCode::kInvalidArgument);
  r = Req(1, 0);
  EXPECT_EQ(s->Submit(r, c).status().code(), absl::StatusCode::kInvalidArgument);
  r = Req(1, 4);
  r.sampling.top_p = 0;
  EXPECT_EQ(s->Submit(r, c).status().code(), absl::StatusCode::kInvalidArgument);
  r = Req(1, 4);
  r.stop_ids.assign(kMaxStopIds + 1, 5);
  EXPECT_EQ(s->Submit(r, c).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(c->done());
  s->Shutdown();
}

TEST_F(SchedulerTest, DrainRefusesNewWorkAndFinishesOld) {
  auto s = Make(2, 128, 4);
  ASSERT_NE(s, nullptr);
  auto c = std::make_shared<Collector>();
  ASSERT_TRUE(s->Submit(Req(9, 30), c).ok());
  s->StartDrain();
  auto late = std::make_shared<Collector>();
  EXPECT_EQ(s->Submit(Req(10, 3), late).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(s->WaitIdle(30s));
  ASSERT_TRUE(c->done());
  EXPECT_EQ(c->tokens.size(), 30u);
  s->Shutdown();
}

TEST_F(SchedulerTest, ShutdownEndsInFlightRequests) {
  auto s = Make(1, 256, 4);
  ASSERT_NE(s, nullptr);
  auto a = std::make_shared<Collector>();
  auto b = std::make_shared<Collector>();
  ASSERT_TRUE(s->Submit(Req(1, 200), a).ok());
  ASSERT_TRUE(s->Submit(Req(2, 200), b).ok());
  ASSERT_TRUE(a->WaitTokens(2));
  s->Shutdown();
  ASSERT_TRUE(a->done());
  ASSERT_TRUE(b->done());
  EXPECT_EQ(a->status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(b->status.code(), absl::StatusCode::kUnavailable);
}

TEST_F(SchedulerTest, EndOfSequenceStopsWithoutStreamingIt) {
  auto s = Make(1, 128, 4);
  ASSERT_NE(s, nullptr);
  // Make EOS the only acceptable token via a stop id on a greedy run: the
  // first greedy token of the reference becomes a stop id.
  GenerateRequest r = Req(4, 10, 0.0f);
  const auto ref = Reference(r);
  ASSERT_FALSE(ref.empty());
  r.stop_ids = {ref[2]};
  auto c = std::make_shared<Collector>();
  ASSERT_TRUE(s->Submit(r, c).ok());
  ASSERT_TRUE(c->Wait());
  EXPECT_EQ(c->info.reason, StreamFinish::kStop);
  const auto first = std::find(ref.begin(), ref.end(), ref[2]);
  EXPECT_EQ(c->tokens, std::vector<int32_t>(ref.begin(), first));
  s->Shutdown();
}


// A decoder that takes commands and never answers (a hung GPU kernel), whose
// health turns bad when the test says so.
class SilentDecoder final : public Decoder {
 public:
  explicit SilentDecoder(DecoderOptions o) : opts_(std::move(o)), rings_(AllocateRingBlock()) {}
  std::string kind() const override { return "silent"; }
  const DecoderOptions& options() const override { return opts_; }
  RingBlock* rings() override { return rings_.get(); }
  absl::Status WriteHistory(int, std::span<const int32_t>) override { return absl::OkStatus(); }
  absl::Status Start() override { return absl::OkStatus(); }
  void Join() override {}
  absl::Status health() const override {
    return hung ? absl::InternalError("no heartbeat for 5 s (injected)") : absl::OkStatus();
  }
  DecoderProgress progress() const override { return {}; }
  std::atomic<bool> hung{false};

 private:
  DecoderOptions opts_;
  RingBlockPtr rings_;
};

TEST_F(SchedulerTest, AFailedDecoderEndsEveryRequestInFlightWithInternal) {
  BackendOptions bo;
  bo.max_slots = 2;
  bo.ctx_per_slot = 128;
  auto b = CpuBackend::Create(model_.get(), bo);
  ASSERT_TRUE(b.ok());
  DecoderOptions d;
  d.max_slots = 2;
  d.ctx_per_slot = 128;
  auto decoder = std::make_unique<SilentDecoder>(d);
  SilentDecoder* silent = decoder.get();
  SchedulerOptions so;
  so.max_batch = 2;
  so.ctx_per_slot = 128;
  so.queue_size = 4;
  auto s = Scheduler::Create(b->get(), std::move(decoder), tok_.get(), so, nullptr);
  ASSERT_TRUE(s.ok()) << s.status();
  std::vector<std::shared_ptr<Collector>> cs;
  for (int i = 0; i < 3; ++i) {  // two admitted to the silent decoder, one queued
    cs.push_back(std::make_shared<Collector>());
    ASSERT_TRUE((*s)->Submit(Req(10 + i, 20), cs.back()).ok());
  }
  for (int i = 0; i < 50 && (*s)->stats().active_sequences < 2; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_FALSE(cs[0]->Wait(100ms)) << "a silent decoder sends no tokens";
  silent->hung = true;
  for (auto& c : cs) {
    ASSERT_TRUE(c->Wait(5s));
    EXPECT_EQ(c->status.code(), absl::StatusCode::kInternal);
    EXPECT_NE(std::string(c->status.message()).find("no heartbeat"), std::string::npos)
        << c->status;
  }
  auto late = std::make_shared<Collector>();
  EXPECT_EQ((*s)->Submit(Req(20, 5), late).status().code(), absl::StatusCode::kUnavailable);
  (*s)->Shutdown();
}

}  // namespace
}  // namespace m40llm
