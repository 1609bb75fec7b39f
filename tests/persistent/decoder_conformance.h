// The command -> event conformance suite every decoder must pass
// (persistent/decoder.h, persistent/protocol.h): admit, cancel at every step
// boundary, slot reuse, stop ids, end-of-generation ids and ignore_eos,
// max_tokens, a full context, logprobs and top-n, invalid admits, shutdown
// with slots active, random joins and leaves, and a stress run; on every
// event, the per-sequence order the protocol promises.
//
// The suite plays the scheduler's part: it prefills a sequence on the
// backend, samples its first token on the host, writes the slot's history
// and admits it, then reads events. Expected streams come from a reference
// executor that runs one sequence alone, step by step, on the same backend
// (its last slot, which no decoder uses) through Forward, Sample and
// ForwardSample, and applies the termination rule as the protocol states it.
// A decoder must reproduce those streams exactly, tokens and logprobs, which
// also holds the backend to batch invariance.
//
// Holds TEST_P definitions: include it from exactly one .cc per test binary,
// which instantiates the suite with INSTANTIATE_TEST_SUITE_P(Name,
// DecoderConformance, ::testing::Values(&MakeTargetFunction)).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/sampler.h"
#include "gtest/gtest.h"
#include "persistent/decoder.h"
#include "persistent/host_decoder.h"
#include "persistent/protocol.h"

namespace m40llm::testing {

// Slots the decoders under test get; the backend needs one more (the
// reference's, the last) and kSuiteContext positions in each.
inline constexpr int kSuiteSlots = 4;
inline constexpr int kSuiteContext = 128;

// What one instantiation tests: a decoder kind over a backend.
struct DecoderTarget {
  std::string skip_reason;  // non-empty: the suite skips with it (no device)
  Backend* backend = nullptr;
  std::function<absl::StatusOr<std::unique_ptr<Decoder>>(const DecoderOptions&)> make;
};
using DecoderTargetFn = DecoderTarget* (*)();

// Makes `t` run host decoders over `backend` (which must outlive it).
inline void UseHostDecoder(Backend* backend, DecoderTarget* t) {
  t->backend = backend;
  t->make = [backend](const DecoderOptions& o) -> absl::StatusOr<std::unique_ptr<Decoder>> {
    auto d = HostDecoder::Create(backend, o);
    if (!d.ok()) return d.status();
    return std::unique_ptr<Decoder>(std::move(*d));
  };
}

// A seed for fresh random inputs: $M40LLM_TEST_SEED to replay one.
inline uint32_t SuiteSeed() {
  if (const char* s = std::getenv("M40LLM_TEST_SEED")) {
    return static_cast<uint32_t>(std::strtoul(s, nullptr, 10));
  }
  return std::random_device{}();
}

// One sequence to run.
struct SeqSpec {
  std::vector<int32_t> prompt;
  SamplingParams params;
  int max_tokens = 16;
  bool ignore_eos = false;
  std::vector<int32_t> stop_ids;
};

// What a sequence's events say, or what the reference says they must be.
struct Stream {
  std::vector<int32_t> tokens;     // kToken tokens, step order
  std::vector<float> logprobs;     // their raw logprobs
  std::vector<std::vector<EventLogprob>> tops;
  FinishReason reason = FinishReason::kNone;
  int32_t stop_token = -1;         // kStop: the token that stopped it
  bool finished = false;
  // Harness only: the index, among all events read, of this sequence's
  // first event and of its finish.
  int64_t first_event = -1, finish_event = -1;
};

// The protocol's termination rule, restated here from persistent/protocol.h
// independently of the decoders' persistent/termination.h.
inline FinishReason ExpectedFinish(const SeqSpec& s, const std::vector<int32_t>& eog,
                                   int32_t token, int step, int pos, int ctx) {
  auto in = [token](const std::vector<int32_t>& v) {
    return std::find(v.begin(), v.end(), token) != v.end();
  };
  if ((!s.ignore_eos && in(eog)) || in(s.stop_ids)) return FinishReason::kStop;
  if (step + 1 >= s.max_tokens || pos + 1 >= ctx) return FinishReason::kLength;
  return FinishReason::kNone;
}

// Prefill of `s` on `slot`: the first token, sampled on the host.
inline SampleResult PrefillAndSample(Backend& b, int slot, const SeqSpec& s) {
  ForwardOutput out;
  const SeqChunk pre{slot, 0, s.prompt, false};
  const absl::Status st = b.Forward({&pre, 1}, &out);
  EXPECT_TRUE(st.ok()) << st;
  if (!st.ok()) return SampleResult{0, 0, {}};
  return Sample(out.logits, s.params, s.prompt, 0, 0, nullptr);
}

// The reference stream of `s` alone, on the backend's last slot.
inline Stream Reference(Backend& b, const SeqSpec& s, const std::vector<int32_t>& eog, int ctx) {
  const int slot = b.options().max_slots - 1;
  Stream r;
  SampleResult t = PrefillAndSample(b, slot, s);
  std::vector<int32_t> hist = s.prompt;
  std::vector<SampleResult> out;
  for (int step = 0;; ++step) {
    const int pos = static_cast<int>(hist.size());
    hist.push_back(t.token);
    const FinishReason why = ExpectedFinish(s, eog, t.token, step, pos, ctx);
    if (why == FinishReason::kStop) {
      r.reason = why;
      r.stop_token = t.token;
      break;
    }
    r.tokens.push_back(t.token);
    r.logprobs.push_back(t.logprob);
    std::vector<EventLogprob> top;
    for (const TokenLogprob& x : t.top) top.push_back({x.token, x.logprob});
    r.tops.push_back(top);
    if (why == FinishReason::kLength) {
      r.reason = why;
      break;
    }
    const SeqChunk dec{slot, pos, {&hist[pos], 1}, false};
    const SampleSpec spec{&s.params, hist, 0, static_cast<uint64_t>(step + 1)};
    const absl::Status st = b.ForwardSample({&dec, 1}, {&spec, 1}, &out);
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) break;
    t = out[0];
  }
  r.finished = true;
  return r;
}

// The scheduler's side of the protocol, with every event checked on arrival.
class DecoderHarness {
 public:
  DecoderHarness(DecoderTarget* t, DecoderOptions opts) : t_(t), opts_(std::move(opts)) {
    auto d = t_->make(opts_);
    EXPECT_TRUE(d.ok()) << d.status();
    if (!d.ok()) return;
    decoder_ = std::move(*d);
    const absl::Status st = decoder_->Start();
    EXPECT_TRUE(st.ok()) << st;
  }
  ~DecoderHarness() {
    if (decoder_ && !shut_down_) Shutdown();
  }
  bool ok() const { return decoder_ != nullptr; }
  const DecoderOptions& options() const { return opts_; }

  // Prefills `s` on `slot`, writes its history and admits it; returns its
  // seq_id.
  uint64_t Admit(int slot, const SeqSpec& s) {
    const SampleResult first = PrefillAndSample(*t_->backend, slot, s);
    std::vector<int32_t> hist = s.prompt;
    hist.push_back(first.token);
    const absl::Status st = decoder_->WriteHistory(slot, hist);
    EXPECT_TRUE(st.ok()) << st;
    return AdmitRaw(slot, s, first, static_cast<int32_t>(s.prompt.size()));
  }

  // Pushes an admit as given, without prefill (for invalid admits).
  uint64_t AdmitRaw(int slot, const SeqSpec& s, const SampleResult& first, int32_t pos) {
    const uint64_t seq = ++next_seq_;
    Command c{};
    c.op = CommandOp::kAdmit;
    c.slot = slot;
    c.pos = pos;
    c.seq_id = seq;
    c.first_token = first.token;
    c.first_logprob = first.logprob;
    c.first_n_top = static_cast<int32_t>(first.top.size());
    for (int k = 0; k < c.first_n_top; ++k) c.first_top[k] = {first.top[k].token, first.top[k].logprob};
    c.sampling.params = s.params;
    c.sampling.max_tokens = s.max_tokens;
    c.sampling.ignore_eos = s.ignore_eos ? 1 : 0;
    c.sampling.n_stop_ids = static_cast<int32_t>(s.stop_ids.size());
    for (size_t i = 0; i < s.stop_ids.size(); ++i) c.sampling.stop_ids[i] = s.stop_ids[i];
    Seq& q = seqs_[seq];
    q.slot = slot;
    q.prompt_len = pos;
    Push(c);
    return seq;
  }

  void Cancel(int slot, uint64_t seq) {
    Command c{};
    c.op = CommandOp::kCancel;
    c.slot = slot;
    c.seq_id = seq;
    Push(c);
  }

  // Pushes kShutdown, reads events until every sequence has finished (the
  // decoder cancels those still running), waits for the decoder to exit and
  // reads whatever else it emitted.
  void Shutdown() {
    shut_down_ = true;
    Command c{};
    c.op = CommandOp::kShutdown;
    Push(c);
    for (auto& [seq, q] : seqs_) {
      if (!WaitFinished(seq)) break;
    }
    decoder_->Join();
    Event e;
    while (decoder_->rings()->events.TryPop(&e)) Check(e);
  }

  // Reads one event within `timeout` and checks it; false on timeout.
  bool Pump(std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    Event e;
    if (!decoder_->rings()->events.PopWait(&e, timeout)) return false;
    Check(e);
    return true;
  }

  // Reads events until `seq` has finished (false on a 30 s stall).
  bool WaitFinished(uint64_t seq) {
    while (!seqs_[seq].stream.finished) {
      if (!Pump()) {
        ADD_FAILURE() << "no event for 30 s while waiting for sequence " << seq;
        return false;
      }
    }
    return true;
  }

  // Reads events until `seq` has at least `n` tokens or has finished.
  bool WaitTokens(uint64_t seq, size_t n) {
    while (seqs_[seq].stream.tokens.size() < n && !seqs_[seq].stream.finished) {
      if (!Pump()) {
        ADD_FAILURE() << "no event for 30 s while waiting for sequence " << seq;
        return false;
      }
    }
    return true;
  }

  const Stream& stream(uint64_t seq) { return seqs_[seq].stream; }
  int events_after_finish() const { return events_after_finish_; }

 private:
  struct Seq {
    int slot = -1;
    int prompt_len = 0;
    Stream stream;
  };

  void Push(const Command& c) {
    ASSERT_TRUE(decoder_->rings()->commands.PushWait(c, std::chrono::seconds(30)))
        << "the command ring stayed full for 30 s";
    decoder_->Notify();  // the producer's part of the protocol
  }

  // The per-sequence order the protocol promises.
  void Check(const Event& e) {
    ASSERT_TRUE(e.kind == EventKind::kToken || e.kind == EventKind::kFinished)
        << "event of kind " << static_cast<int>(e.kind);
    EXPECT_GE(e.decode_step, last_decode_step_) << "decode_step went backwards";
    last_decode_step_ = e.decode_step;
    auto it = seqs_.find(e.seq_id);
    ASSERT_NE(it, seqs_.end()) << "event for unknown sequence " << e.seq_id;
    Seq& q = it->second;
    Stream& s = q.stream;
    const int64_t index = events_read_++;
    if (s.first_event < 0) s.first_event = index;
    EXPECT_EQ(e.slot, q.slot) << "sequence " << e.seq_id;
    if (s.finished) {
      ++events_after_finish_;
      ADD_FAILURE() << "event after the finish of sequence " << e.seq_id;
      return;
    }
    const int step = static_cast<int>(s.tokens.size());
    if (e.kind == EventKind::kToken) {
      EXPECT_EQ(e.step, step) << "sequence " << e.seq_id << ": steps out of order";
      // A decode step's tokens carry its duration; the first token is no step's.
      if (step > 0) EXPECT_GT(e.step_ns, 0u) << "sequence " << e.seq_id;
      EXPECT_EQ(e.pos, q.prompt_len + step) << "sequence " << e.seq_id;
      ASSERT_GE(e.n_top, 0);
      ASSERT_LE(e.n_top, kMaxEventLogprobs);
      s.tokens.push_back(e.token);
      s.logprobs.push_back(e.logprob);
      s.tops.emplace_back(e.top, e.top + e.n_top);
      return;
    }
    s.finished = true;
    s.finish_event = index;
    s.reason = e.reason;
    if (e.reason == FinishReason::kStop) {
      EXPECT_EQ(e.step, step) << "sequence " << e.seq_id << ": the stop token's step";
      EXPECT_EQ(e.pos, q.prompt_len + step) << "sequence " << e.seq_id;
      s.stop_token = e.token;
    }
  }

  DecoderTarget* t_;
  DecoderOptions opts_;
  std::unique_ptr<Decoder> decoder_;
  std::map<uint64_t, Seq> seqs_;
  uint64_t next_seq_ = 1000;
  uint32_t last_decode_step_ = 0;
  int64_t events_read_ = 0;
  int events_after_finish_ = 0;
  bool shut_down_ = false;
};

// Tokens, logprobs, top lists and the finish of `got` equal `want`'s.
inline void ExpectSameStream(const Stream& got, const Stream& want, const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_TRUE(got.finished);
  EXPECT_EQ(got.tokens, want.tokens);
  EXPECT_EQ(got.logprobs, want.logprobs);
  ASSERT_EQ(got.tops.size(), want.tops.size());
  for (size_t i = 0; i < got.tops.size(); ++i) {
    ASSERT_EQ(got.tops[i].size(), want.tops[i].size()) << "step " << i;
    for (size_t k = 0; k < got.tops[i].size(); ++k) {
      EXPECT_EQ(got.tops[i][k].token, want.tops[i][k].token) << "step " << i << " top " << k;
      EXPECT_EQ(got.tops[i][k].logprob, want.tops[i][k].logprob) << "step " << i << " top " << k;
    }
  }
  EXPECT_EQ(got.reason, want.reason);
  EXPECT_EQ(got.stop_token, want.stop_token);
}

// `got` (cancelled at some point) is a prefix of `want` and ended cancelled,
// or is all of it when the sequence ended first.
inline void ExpectCancelledPrefix(const Stream& got, const Stream& want, const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_TRUE(got.finished);
  ASSERT_LE(got.tokens.size(), want.tokens.size());
  EXPECT_TRUE(std::equal(got.tokens.begin(), got.tokens.end(), want.tokens.begin()));
  EXPECT_TRUE(std::equal(got.logprobs.begin(), got.logprobs.end(), want.logprobs.begin()));
  if (got.reason != FinishReason::kCancelled) {
    EXPECT_EQ(got.tokens.size(), want.tokens.size());
    EXPECT_EQ(got.reason, want.reason);
  }
}

class DecoderConformance : public ::testing::TestWithParam<DecoderTargetFn> {
 protected:
  void SetUp() override {
    target_ = GetParam()();
    ASSERT_NE(target_, nullptr);
    if (!target_->skip_reason.empty()) GTEST_SKIP() << target_->skip_reason;
    ASSERT_NE(target_->backend, nullptr) << "the target's backend could not be built";
    ASSERT_GE(target_->backend->options().max_slots, kSuiteSlots + 1);
    ASSERT_GE(target_->backend->options().ctx_per_slot, kSuiteContext);
    seed_ = SuiteSeed();
    rng_.seed(seed_);
  }

  DecoderOptions Options(std::vector<int32_t> eog = {}, int ctx = kSuiteContext) const {
    DecoderOptions o;
    o.max_slots = kSuiteSlots;
    o.ctx_per_slot = ctx;
    o.eog_ids = std::move(eog);
    return o;
  }

  std::vector<int32_t> Prompt(int n) {
    std::uniform_int_distribution<int32_t> d(0, target_->backend->config().n_vocab - 1);
    std::vector<int32_t> p(n);
    for (int32_t& t : p) t = d(rng_);
    return p;
  }

  // Greedy or seeded sampling with every feature, chosen by `kind`.
  SeqSpec Spec(int kind, int prompt_len, int max_tokens) {
    SeqSpec s;
    s.prompt = Prompt(prompt_len);
    s.max_tokens = max_tokens;
    s.params.seed = rng_();
    switch (kind % 4) {
      case 0:
        s.params.temperature = 0.0f;
        break;
      case 1:
        s.params.temperature = 0.9f;
        s.params.top_k = 40;
        s.params.top_p = 0.9f;
        s.params.min_p = 0.02f;
        break;
      case 2:
        s.params.temperature = 0.8f;
        s.params.repetition_penalty = 1.2f;
        s.params.presence_penalty = 0.3f;
        s.params.frequency_penalty = 0.2f;
        s.params.penalty_last_n = -1;
        s.params.n_logprobs = 5;
        break;
      default:
        s.params.temperature = 1.3f;
        s.params.top_k = 7;
        s.params.n_logprobs = kMaxEventLogprobs;
        break;
    }
    return s;
  }

  Stream Ref(const SeqSpec& s, const std::vector<int32_t>& eog = {}, int ctx = kSuiteContext) {
    return Reference(*target_->backend, s, eog, ctx);
  }

  DecoderTarget* target_ = nullptr;
  uint32_t seed_ = 0;
  std::mt19937 rng_;
};

TEST_P(DecoderConformance, EachSamplingModeMatchesTheReferenceToMaxTokens) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  DecoderHarness h(target_, Options());
  ASSERT_TRUE(h.ok());
  for (int kind = 0; kind < 4; ++kind) {
    const SeqSpec s = Spec(kind, 5 + 3 * kind, 24);
    const Stream want = Ref(s);
    ASSERT_EQ(want.reason, FinishReason::kLength);  // no end ids: it runs to max_tokens
    ASSERT_EQ(want.tokens.size(), 24u);
    const uint64_t seq = h.Admit(kind, s);
    ASSERT_TRUE(h.WaitFinished(seq));
    ExpectSameStream(h.stream(seq), want, "sampling mode " + std::to_string(kind));
  }
}

TEST_P(DecoderConformance, SequencesRunningTogetherGiveTheirSoloStreams) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  DecoderHarness h(target_, Options());
  ASSERT_TRUE(h.ok());
  std::vector<SeqSpec> specs;
  std::vector<Stream> want;
  for (int i = 0; i < kSuiteSlots; ++i) {
    specs.push_back(Spec(i, 3 + 4 * i, 10 + 7 * i));
    want.push_back(Ref(specs.back()));
  }
  std::vector<uint64_t> seqs;
  for (int i = 0; i < kSuiteSlots; ++i) seqs.push_back(h.Admit(i, specs[i]));
  for (int i = 0; i < kSuiteSlots; ++i) {
    ASSERT_TRUE(h.WaitFinished(seqs[i]));
    ExpectSameStream(h.stream(seqs[i]), want[i], "slot " + std::to_string(i));
  }
}

TEST_P(DecoderConformance, LogprobsAndTopNAreTheReferences) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  DecoderHarness h(target_, Options());
  ASSERT_TRUE(h.ok());
  for (int n : {1, 5, kMaxEventLogprobs}) {
    SeqSpec s = Spec(1, 6, 8);
    s.params.n_logprobs = n;
    const Stream want = Ref(s);
    const uint64_t seq = h.Admit(2, s);
    ASSERT_TRUE(h.WaitFinished(seq));
    for (const auto& top : h.stream(seq).tops) EXPECT_EQ(static_cast<int>(top.size()), n);
    ExpectSameStream(h.stream(seq), want, "n_logprobs " + std::to_string(n));
  }
}

TEST_P(DecoderConformance, MaxTokensOneEndsOnTheFirstToken) {
  DecoderHarness h(target_, Options());
  ASSERT_TRUE(h.ok());
  const SeqSpec s = Spec(0, 7, 1);
  const uint64_t seq = h.Admit(1, s);
  ASSERT_TRUE(h.WaitFinished(seq));
  ExpectSameStream(h.stream(seq), Ref(s), "max_tokens 1");
  EXPECT_EQ(h.stream(seq).tokens.size(), 1u);
  EXPECT_EQ(h.stream(seq).reason, FinishReason::kLength);
}

TEST_P(DecoderConformance, AStopIdEndsTheSequenceWithoutStreamingIt) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  DecoderHarness h(target_, Options());
  ASSERT_TRUE(h.ok());
  SeqSpec s = Spec(1, 9, 20);
  const Stream free_run = Ref(s);
  ASSERT_GE(free_run.tokens.size(), 5u);
  // Stop at the token of step 4 (or earlier, where it already came up).
  s.stop_ids = {free_run.tokens[4], static_cast<int32_t>(target_->backend->config().n_vocab - 1)};
  const Stream want = Ref(s);
  ASSERT_EQ(want.reason, FinishReason::kStop);
  ASSERT_LE(want.tokens.size(), 4u);
  const uint64_t seq = h.Admit(3, s);
  ASSERT_TRUE(h.WaitFinished(seq));
  ExpectSameStream(h.stream(seq), want, "stop id");
  // The first token itself can stop the sequence: no token at all.
  s.stop_ids = {free_run.tokens[0]};
  const uint64_t first = h.Admit(3, s);
  ASSERT_TRUE(h.WaitFinished(first));
  EXPECT_TRUE(h.stream(first).tokens.empty());
  EXPECT_EQ(h.stream(first).reason, FinishReason::kStop);
  EXPECT_EQ(h.stream(first).stop_token, free_run.tokens[0]);
}

TEST_P(DecoderConformance, EndOfGenerationIdsStopUnlessIgnoreEos) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  SeqSpec s = Spec(0, 8, 20);
  const Stream free_run = Ref(s);
  ASSERT_GE(free_run.tokens.size(), 4u);
  const std::vector<int32_t> eog = {free_run.tokens[3]};
  DecoderHarness h(target_, Options(eog));
  ASSERT_TRUE(h.ok());
  const Stream want = Ref(s, eog);
  ASSERT_EQ(want.reason, FinishReason::kStop);
  const uint64_t seq = h.Admit(0, s);
  ASSERT_TRUE(h.WaitFinished(seq));
  ExpectSameStream(h.stream(seq), want, "end of generation");
  s.ignore_eos = true;
  const uint64_t ignoring = h.Admit(0, s);
  ASSERT_TRUE(h.WaitFinished(ignoring));
  ExpectSameStream(h.stream(ignoring), free_run, "ignore_eos");
}

TEST_P(DecoderConformance, AFullContextEndsWithLength) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  constexpr int kCtx = 32;
  DecoderHarness h(target_, Options({}, kCtx));
  ASSERT_TRUE(h.ok());
  const SeqSpec s = Spec(2, 20, 1000);
  const Stream want = Ref(s, {}, kCtx);
  ASSERT_EQ(want.reason, FinishReason::kLength);
  ASSERT_EQ(want.tokens.size(), static_cast<size_t>(kCtx - 20));  // positions 20..31
  const uint64_t seq = h.Admit(2, s);
  ASSERT_TRUE(h.WaitFinished(seq));
  ExpectSameStream(h.stream(seq), want, "full context");
}

TEST_P(DecoderConformance, CancelAtEveryStepBoundaryThenTheSlotIsReused) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  DecoderHarness h(target_, Options());
  ASSERT_TRUE(h.ok());
  const SeqSpec s = Spec(1, 6, 12);
  const Stream want = Ref(s);
  const SeqSpec next = Spec(3, 4, 6);
  const Stream want_next = Ref(next);
  // k < 0: the cancel follows the admit in the ring, before any event is read.
  for (int k = -1; k <= 12; ++k) {
    const std::string what = "cancel after " + std::to_string(k) + " tokens";
    const uint64_t seq = h.Admit(1, s);
    if (k >= 0) ASSERT_TRUE(h.WaitTokens(seq, static_cast<size_t>(k)));
    h.Cancel(1, seq);
    ASSERT_TRUE(h.WaitFinished(seq));
    ExpectCancelledPrefix(h.stream(seq), want, what);
    if (k >= 0 && static_cast<size_t>(k) < want.tokens.size()) {
      EXPECT_GE(h.stream(seq).tokens.size(), static_cast<size_t>(k)) << what;
    }
    // A cancel for a sequence that has ended changes nothing.
    h.Cancel(1, seq);
    const uint64_t reuse = h.Admit(1, next);
    ASSERT_TRUE(h.WaitFinished(reuse));
    ExpectSameStream(h.stream(reuse), want_next, what + ", then the slot reused");
  }
  EXPECT_EQ(h.events_after_finish(), 0);
}

TEST_P(DecoderConformance, ACancelForAnotherSequenceIsIgnored) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  DecoderHarness h(target_, Options());
  ASSERT_TRUE(h.ok());
  const SeqSpec s = Spec(0, 5, 16);
  const uint64_t seq = h.Admit(0, s);
  h.Cancel(0, seq + 12345);  // same slot, another sequence
  h.Cancel(2, seq);          // the sequence, in a slot it does not hold
  ASSERT_TRUE(h.WaitFinished(seq));
  ExpectSameStream(h.stream(seq), Ref(s), "stale cancels");
}

TEST_P(DecoderConformance, AnInvalidAdmitGetsAnErrorAndChangesNothing) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  DecoderHarness h(target_, Options());
  ASSERT_TRUE(h.ok());
  SeqSpec s = Spec(0, 5, 100);
  s.ignore_eos = true;
  const Stream want = Ref(s);
  // The bad admits follow at once, while the sequence has most of its 100
  // steps to go, so slot 2 is almost surely busy when the decoder reads the
  // second admit for it.
  const uint64_t seq = h.Admit(2, s);
  const SampleResult first{1, -1.0f, {}};
  // Into the busy slot, a slot out of range, and past the context.
  const uint64_t busy = h.AdmitRaw(2, s, first, 3);
  const uint64_t out_of_range = h.AdmitRaw(kSuiteSlots, s, first, 3);
  const uint64_t past_ctx = h.AdmitRaw(0, s, first, kSuiteContext);
  SeqSpec zero = s;
  zero.max_tokens = 0;
  const uint64_t no_tokens = h.AdmitRaw(1, zero, first, 3);
  for (uint64_t bad : {out_of_range, past_ctx, no_tokens}) {
    ASSERT_TRUE(h.WaitFinished(bad));
    EXPECT_EQ(h.stream(bad).reason, FinishReason::kError) << bad;
    EXPECT_TRUE(h.stream(bad).tokens.empty()) << bad;
  }
  ASSERT_TRUE(h.WaitFinished(seq));
  ASSERT_TRUE(h.WaitFinished(busy));
  ExpectSameStream(h.stream(seq), want, "the sequence in the busy slot");
  if (h.stream(busy).first_event < h.stream(seq).finish_event) {
    // Read while the slot was busy: refused.
    EXPECT_EQ(h.stream(busy).reason, FinishReason::kError);
    EXPECT_TRUE(h.stream(busy).tokens.empty());
  } else {
    // The first sequence had ended (a descheduled test thread): a valid
    // admit into a free slot, which runs.
    EXPECT_NE(h.stream(busy).reason, FinishReason::kError);
  }
}

TEST_P(DecoderConformance, ShutdownCancelsEveryActiveSlot) {
  DecoderHarness h(target_, Options());
  ASSERT_TRUE(h.ok());
  std::vector<uint64_t> seqs;
  for (int i = 0; i < 3; ++i) {
    SeqSpec s = Spec(i, 4, 100);
    s.ignore_eos = true;
    seqs.push_back(h.Admit(i, s));
  }
  for (uint64_t seq : seqs) ASSERT_TRUE(h.WaitTokens(seq, 2));
  h.Shutdown();  // reads everything the decoder emitted before it exited
  for (uint64_t seq : seqs) {
    EXPECT_TRUE(h.stream(seq).finished) << seq;
    EXPECT_EQ(h.stream(seq).reason, FinishReason::kCancelled) << seq;
  }
  EXPECT_EQ(h.events_after_finish(), 0);
}

TEST_P(DecoderConformance, RandomJoinsCancelsAndLeaves) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  DecoderHarness h(target_, Options());
  ASSERT_TRUE(h.ok());
  constexpr int kRequests = 24;
  std::vector<SeqSpec> specs;
  std::vector<Stream> want;
  for (int i = 0; i < kRequests; ++i) {
    specs.push_back(Spec(static_cast<int>(rng_() % 4), 1 + static_cast<int>(rng_() % 20),
                         1 + static_cast<int>(rng_() % 30)));
    if (rng_() % 3 == 0) specs.back().stop_ids = {static_cast<int32_t>(rng_() % 64)};
    want.push_back(Ref(specs.back()));
  }
  struct Running {
    uint64_t seq = 0;
    int request = -1;
    size_t cancel_after = SIZE_MAX;
  };
  std::vector<Running> slots(kSuiteSlots);
  std::vector<uint64_t> seq_of(kRequests);
  std::vector<bool> cancelled(kRequests, false);
  int next = 0, done = 0;
  while (done < kRequests) {
    for (int sl = 0; sl < kSuiteSlots; ++sl) {
      Running& r = slots[sl];
      if (r.request >= 0) {
        const Stream& st = h.stream(r.seq);
        if (st.finished) {
          ++done;
          r.request = -1;
        } else if (st.tokens.size() >= r.cancel_after && !cancelled[r.request]) {
          cancelled[r.request] = true;
          h.Cancel(sl, r.seq);
        }
      }
      if (r.request < 0 && next < kRequests) {
        r.request = next;
        r.seq = seq_of[next] = h.Admit(sl, specs[next]);
        r.cancel_after = rng_() % 4 == 0 ? rng_() % 8 : SIZE_MAX;
        ++next;
      }
    }
    if (done < kRequests) ASSERT_TRUE(h.Pump()) << "stalled with " << done << " done";
  }
  for (int i = 0; i < kRequests; ++i) {
    const std::string what = "request " + std::to_string(i);
    if (cancelled[i]) {
      ExpectCancelledPrefix(h.stream(seq_of[i]), want[i], what);
    } else {
      ExpectSameStream(h.stream(seq_of[i]), want[i], what);
    }
  }
}

// $M40LLM_DECODER_STRESS_COMMANDS commands (default 3000): random admits of
// greedy sequences over a few prompts, with random lengths and cancels. No
// event may be lost, duplicated or out of order, and every stream must be a
// prefix of its prompt's reference.
TEST_P(DecoderConformance, StressRandomCommands) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  long budget = 3000;
  if (const char* s = std::getenv("M40LLM_DECODER_STRESS_COMMANDS")) budget = std::atol(s);
  DecoderHarness h(target_, Options());
  ASSERT_TRUE(h.ok());
  constexpr int kPrompts = 4, kMaxLen = 12;
  std::vector<SeqSpec> specs;
  std::vector<Stream> want;
  for (int i = 0; i < kPrompts; ++i) {
    specs.push_back(Spec(0, 2 + 3 * i, kMaxLen));
    specs.back().ignore_eos = true;
    want.push_back(Ref(specs.back()));
  }
  struct Running {
    uint64_t seq = 0;
    int prompt = -1;
    bool cancel_sent = false;
  };
  std::vector<Running> slots(kSuiteSlots);
  std::vector<std::pair<uint64_t, int>> all;
  long commands = 0, finished = 0;
  while (commands < budget || std::any_of(slots.begin(), slots.end(),
                                          [](const Running& r) { return r.prompt >= 0; })) {
    for (int sl = 0; sl < kSuiteSlots; ++sl) {
      Running& r = slots[sl];
      if (r.prompt >= 0 && h.stream(r.seq).finished) {
        r.prompt = -1;
        ++finished;
      }
      if (r.prompt >= 0 && !r.cancel_sent && commands < budget && rng_() % 5 == 0) {
        h.Cancel(sl, r.seq);
        r.cancel_sent = true;
        ++commands;
      } else if (r.prompt < 0 && commands < budget) {
        r.prompt = static_cast<int>(rng_() % kPrompts);
        SeqSpec s = specs[r.prompt];
        s.max_tokens = 1 + static_cast<int>(rng_() % kMaxLen);
        r.seq = h.Admit(sl, s);
        r.cancel_sent = false;
        all.push_back({r.seq, r.prompt});
        ++commands;
      }
    }
    const bool active = std::any_of(slots.begin(), slots.end(), [&](const Running& r) {
      return r.prompt >= 0 && !h.stream(r.seq).finished;
    });
    if (!active && commands >= budget) break;
    ASSERT_TRUE(h.Pump()) << "stalled after " << commands << " commands";
  }
  for (const Running& r : slots) finished += r.prompt >= 0;
  for (const auto& [seq, p] : all) {
    const Stream& got = h.stream(seq);
    ASSERT_TRUE(got.finished) << seq;
    ASSERT_LE(got.tokens.size(), want[p].tokens.size());
    ASSERT_TRUE(std::equal(got.tokens.begin(), got.tokens.end(), want[p].tokens.begin())) << seq;
    if (got.reason != FinishReason::kCancelled) ASSERT_EQ(got.reason, FinishReason::kLength);
  }
  EXPECT_EQ(finished, static_cast<long>(all.size()));
  EXPECT_EQ(h.events_after_finish(), 0);
  std::printf("[ figures  ] %ld commands, %zu sequences\n", commands, all.size());
}

}  // namespace m40llm::testing
