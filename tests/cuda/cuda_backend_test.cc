// The CUDA backend against the CPU reference backend on random-weight models:
// logits of batched prefill and decode, greedy continuations, the memory plan
// and its refusal. (Device faults: cuda_fault_test.cc, its own process.)
#include "cuda/cuda_backend.h"

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "tests/cuda/cuda_test_util.h"
#include "engine/cpu_backend.h"
#include "engine/demo_model.h"
#include "engine/eval.h"
#include "engine/scheduler.h"
#include "engine/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/support/host_scheduler.h"
#include "tests/support/stream_collector.h"
#include "tests/support/test_support.h"

namespace m40llm {
namespace {

using testing::RelL2;

// The same model on both backends.
struct Pair {
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<LlamaModel> host;
  std::unique_ptr<CpuBackend> cpu;
  std::unique_ptr<CudaBackend> cuda;
};

RandomModelSpec Small() {
  RandomModelSpec s;
  s.n_embd = 64;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_head_kv = 2;
  s.n_ff = 96;
  s.n_ctx = 128;
  s.seed = 7;
  return s;
}

void MakePair(const RandomModelSpec& spec, int slots, int ctx, int tokens_per_pass, Pair* p) {
  const std::string path = m40llm::testing::TempDir() + "/cuda_backend_" + std::to_string(spec.seed) +
                           "_" + std::to_string(spec.n_embd) + ".gguf";
  M40_ASSERT_OK(WriteRandomLlama(spec, path));
  M40_ASSERT_OK_AND_ASSIGN(p->file, GgufFile::Open(path));
  // FP16 weights, as the CUDA backend holds them, so both run the same values.
  M40_ASSERT_OK_AND_ASSIGN(p->host, LlamaModel::Load(*p->file, nullptr, 0, WeightFormat::kF16));
  BackendOptions o;
  o.max_slots = slots;
  o.ctx_per_slot = ctx;
  M40_ASSERT_OK_AND_ASSIGN(p->cpu, CpuBackend::Create(p->host.get(), o));
  CudaBackendOptions co;
  co.base = o;
  co.max_tokens_per_pass = tokens_per_pass;
  M40_ASSERT_OK_AND_ASSIGN(p->cuda, CudaBackend::Create(*p->file, co));
}

std::vector<int32_t> RandomTokens(int n, int n_vocab, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> d(0, n_vocab - 1);
  std::vector<int32_t> t(n);
  for (int32_t& v : t) v = d(rng);
  return t;
}

// Runs `batch` on both backends; every logit row must agree within `tol`.
void ExpectSameLogits(Pair& p, const std::vector<SeqChunk>& batch, double tol,
                      const std::string& what, std::vector<float>* cpu_logits = nullptr) {
  ForwardOutput want, got;
  M40_ASSERT_OK(p.cpu->Forward(batch, &want));
  got.logits.assign(want.logits.size() + 7, NAN);  // poison: stale values must not pass
  M40_ASSERT_OK(p.cuda->Forward(batch, &got));
  ASSERT_EQ(got.rows, want.rows) << what;
  ASSERT_EQ(got.logits.size(), want.logits.size()) << what;
  const int n_vocab = p.cpu->config().n_vocab;
  for (int64_t r = 0; r < want.rows; ++r) {
    EXPECT_LE(RelL2(&got.logits[r * n_vocab], &want.logits[r * n_vocab], n_vocab), tol)
        << what << ", row " << r;
  }
  if (cpu_logits) *cpu_logits = want.logits;
}

// FP32 on both sides over the same FP16 weights and KV rounding: differences
// are summation order and rare FP16 rounding flips of K/V.
constexpr double kTol = 1e-3;

void ExpectMatchesCpu(const RandomModelSpec& spec, int tokens_per_pass) {
  Pair p;
  MakePair(spec, 3, 96, tokens_per_pass, &p);
  if (::testing::Test::HasFatalFailure()) return;
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const int n_vocab = p.cpu->config().n_vocab;

  // Prefill: two prompts in different slots, one with every row's logits.
  std::vector<int32_t> a = RandomTokens(37, n_vocab, rng), b = RandomTokens(9, n_vocab, rng);
  ExpectSameLogits(p, {{0, 0, a, true}, {2, 0, b, false}}, kTol, "prefill");
  // A second chunk of slot 0 continuing its prompt (chunked prefill).
  std::vector<int32_t> a2 = RandomTokens(11, n_vocab, rng);
  ExpectSameLogits(p, {{0, 37, a2, true}}, kTol, "second chunk");
  // Decode steps for both slots, plus a third slot joining midway.
  int pos0 = 48, pos2 = 9, pos1 = 0;
  std::vector<int32_t> c = RandomTokens(5, n_vocab, rng);
  for (int step = 0; step < 12; ++step) {
    std::vector<int32_t> t0 = RandomTokens(1, n_vocab, rng), t2 = RandomTokens(1, n_vocab, rng);
    std::vector<SeqChunk> batch = {{0, pos0, t0, false}, {2, pos2, t2, false}};
    if (step == 4) batch.push_back({1, pos1, c, false});
    ExpectSameLogits(p, batch, kTol, "decode step " + std::to_string(step));
    ++pos0;
    ++pos2;
    if (step == 4) pos1 = 5;
  }
}

TEST(CudaBackend, GqaMatchesCpu) {
  M40_REQUIRE_CUDA_DEVICE();
  ExpectMatchesCpu(Small(), 512);
}

TEST(CudaBackend, PiecesOfFewTokensMatchCpu) {
  M40_REQUIRE_CUDA_DEVICE();
  RandomModelSpec s = Small();
  s.seed = 9;
  ExpectMatchesCpu(s, 8);  // a 37-token prompt runs in 5 passes
}

TEST(CudaBackend, MhaMqaTiedRopeFreqsAndOddSizesMatchCpu) {
  M40_REQUIRE_CUDA_DEVICE();
  RandomModelSpec s = Small();
  s.n_head_kv = s.n_head;
  s.seed = 11;
  ExpectMatchesCpu(s, 512);
  s = Small();
  s.n_head_kv = 1;
  s.tied_output = true;
  s.rope_freqs = true;
  s.rope_scale_linear = 2.0f;
  s.seed = 12;
  ExpectMatchesCpu(s, 512);
  // Rows that are not a multiple of 8 halves take the padded-row path.
  s = Small();
  s.n_embd = 72;  // 3 heads of 24
  s.n_head = 3;
  s.n_head_kv = 3;
  s.n_ff = 100;
  s.seed = 13;
  ExpectMatchesCpu(s, 512);
}

// qwen2: Q/K/V biases (fused rows for decode, separate for prompts) and NeoX
// RoPE, with a tied output.
TEST(CudaBackend, Qwen2MatchesCpu) {
  M40_REQUIRE_CUDA_DEVICE();
  RandomModelSpec s = Small();
  s.arch = "qwen2";
  s.tied_output = true;
  s.rope_freq_base = 1000000.0f;
  s.seed = 14;
  ExpectMatchesCpu(s, 512);
  s.seed = 15;
  ExpectMatchesCpu(s, 8);
}

TEST(CudaBackend, GreedyContinuationMatchesCpuWhereMarginsAllow) {
  M40_REQUIRE_CUDA_DEVICE();
  RandomModelSpec s = Small();
  s.n_vocab = 2000;
  s.seed = 21;
  Pair p;
  MakePair(s, 1, 128, 512, &p);
  if (HasFatalFailure()) return;
  std::mt19937 rng(m40llm::testing::TestSeed());
  const std::vector<int32_t> prompt = RandomTokens(24, s.n_vocab, rng);
  M40_ASSERT_OK_AND_ASSIGN(EvalResult want, RunGreedyEval(*p.cpu, prompt, 64));
  M40_ASSERT_OK_AND_ASSIGN(EvalResult got, RunGreedyEval(*p.cuda, prompt, 64));
  ASSERT_EQ(got.greedy.size(), 64u);
  ASSERT_EQ(want.greedy.size(), 64u);
  EXPECT_LE(RelL2(got.last_logits.data(), want.last_logits.data(), s.n_vocab), kTol);
  size_t same = 0;
  while (same < 64 && got.greedy[same].token == want.greedy[same].token) ++same;
  if (same < 64) {
    // A different token is acceptable only where the CPU's top two are within
    // what the FP32 differences can swap.
    EXPECT_LT(want.greedy[same].margin, 1e-3f * std::abs(want.greedy[same].logit) + 1e-3f)
        << "step " << same << ": cpu " << want.greedy[same].token << ", cuda "
        << got.greedy[same].token;
  }
  std::printf("greedy: %zu of 64 steps identical\n", same);
}

// A sequence's logits must not depend on what else is in the decode batch:
// the same prompt and tokens, decoded alone and beside other sequences (which
// change the batch size and the longest context), give identical bits.
TEST(CudaBackend, DecodeIsBatchInvariant) {
  M40_REQUIRE_CUDA_DEVICE();
  RandomModelSpec s = Small();
  s.seed = 31;
  s.n_ctx = 1024;
  Pair alone, crowd;
  MakePair(s, 4, 1024, 512, &alone);
  if (HasFatalFailure()) return;
  MakePair(s, 4, 1024, 512, &crowd);
  if (HasFatalFailure()) return;
  std::mt19937 rng(m40llm::testing::TestSeed());
  const int n_vocab = alone.cpu->config().n_vocab;
  const std::vector<int32_t> prompt = RandomTokens(300, n_vocab, rng);
  const std::vector<int32_t> other = RandomTokens(700, n_vocab, rng);
  ForwardOutput out;
  M40_ASSERT_OK(alone.cuda->Forward({{{2, 0, prompt, false}}}, &out));
  M40_ASSERT_OK(crowd.cuda->Forward({{{2, 0, prompt, false}}}, &out));
  M40_ASSERT_OK(crowd.cuda->Forward({{{0, 0, other, false}}}, &out));
  for (int step = 0; step < 6; ++step) {
    std::vector<int32_t> t = RandomTokens(3, n_vocab, rng);
    const int pos = 300 + step;
    ForwardOutput a, b;
    M40_ASSERT_OK(alone.cuda->Forward({{{2, pos, {&t[0], 1}, false}}}, &a));
    std::vector<SeqChunk> batch = {{0, 700 + step, {&t[1], 1}, false},
                                   {2, pos, {&t[0], 1}, false}};
    if (step % 2 == 1) batch.push_back({3, step / 2, {&t[2], 1}, false});
    M40_ASSERT_OK(crowd.cuda->Forward(batch, &b));
    ASSERT_EQ(a.logits.size(), static_cast<size_t>(n_vocab));
    EXPECT_EQ(std::memcmp(a.logits.data(), b.logits.data() + n_vocab, n_vocab * sizeof(float)), 0)
        << "step " << step << ": slot 2's logits changed with its batch";
  }
}

// Device sampling against host sampling of the same step's logits: the host
// path (Backend::ForwardSample: Forward, then Sample) and the device path
// run the same decode step (rewriting the same K/V), so the tokens must agree
// and the raw logprobs match to FP32 rounding.
TEST(CudaBackend, DeviceSamplingMatchesHostSampling) {
  M40_REQUIRE_CUDA_DEVICE();
  RandomModelSpec s = Small();
  s.n_vocab = 3000;
  s.seed = 41;
  Pair p;
  MakePair(s, 4, 128, 512, &p);
  if (HasFatalFailure()) return;
  std::mt19937 rng(m40llm::testing::TestSeed());
  std::vector<SamplingParams> params(4);
  params[0].temperature = 0;
  params[1].temperature = 0.8f;
  params[1].top_k = 40;
  params[1].top_p = 0.9f;
  params[1].n_logprobs = 5;
  params[2].temperature = 1.2f;
  params[2].min_p = 0.05f;
  params[2].repetition_penalty = 1.3f;
  params[2].presence_penalty = 0.5f;
  params[2].frequency_penalty = 0.25f;
  params[2].penalty_last_n = -1;
  params[3].temperature = 0.6f;
  params[3].n_logprobs = 20;
  params[3].penalty_last_n = 8;
  params[3].repetition_penalty = 1.1f;
  std::vector<std::vector<int32_t>> hist(4);
  ForwardOutput out;
  for (int slot = 0; slot < 4; ++slot) {
    params[slot].seed = 1000 + slot;
    hist[slot] = RandomTokens(10 + 7 * slot, s.n_vocab, rng);
    hist[slot].push_back(hist[slot][1]);  // repeats for the penalties
    M40_ASSERT_OK(p.cuda->Forward({{{slot, 0, hist[slot], false}}}, &out));
  }
  int agreed = 0;
  for (int step = 0; step < 16; ++step) {
    std::vector<SeqChunk> batch;
    std::vector<SampleSpec> specs;
    for (int slot = 0; slot < 4; ++slot) {
      batch.push_back({slot, static_cast<int>(hist[slot].size()) - 1, {&hist[slot].back(), 1},
                       false});
      specs.push_back({&params[slot], hist[slot], 0, static_cast<uint64_t>(step)});
    }
    std::vector<SampleResult> host, dev;
    M40_ASSERT_OK(p.cuda->Backend::ForwardSample(batch, specs, &host));
    M40_ASSERT_OK(p.cuda->ForwardSample(batch, specs, &dev));
    ASSERT_EQ(host.size(), 4u);
    ASSERT_EQ(dev.size(), 4u);
    for (int slot = 0; slot < 4; ++slot) {
      SCOPED_TRACE(::testing::Message() << "step " << step << " slot " << slot);
      EXPECT_EQ(dev[slot].token, host[slot].token);
      EXPECT_NEAR(dev[slot].logprob, host[slot].logprob, 1e-4);
      ASSERT_EQ(dev[slot].top.size(), host[slot].top.size());
      for (size_t k = 0; k < host[slot].top.size(); ++k) {
        EXPECT_EQ(dev[slot].top[k].token, host[slot].top[k].token);
        EXPECT_NEAR(dev[slot].top[k].logprob, host[slot].top[k].logprob, 1e-4);
      }
      agreed += dev[slot].token == host[slot].token;
      hist[slot].push_back(host[slot].token);
    }
  }
  std::printf("device sampling: %d of 64 tokens equal to host sampling\n", agreed);
}

// Through the scheduler (batched prefill, continuous batching, device
// sampling in the decode loop): every request gets the tokens it gets alone.

TEST(CudaBackend, SchedulerRequestsGetTheirSoloTokens) {
  M40_REQUIRE_CUDA_DEVICE();
  RandomModelSpec s = Small();
  s.seed = 51;
  Pair p;
  MakePair(s, 4, 128, 512, &p);
  if (HasFatalFailure()) return;
  M40_ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::FromGguf(*p.file));
  SchedulerOptions so;
  so.max_batch = 4;
  so.ctx_per_slot = 128;
  so.queue_size = 16;
  M40_ASSERT_OK_AND_ASSIGN(auto sched, testing::MakeHostScheduler(p.cuda.get(), tok.get(), so, nullptr));
  std::vector<GenerateRequest> reqs;
  for (int i = 0; i < 10; ++i) {
    GenerateRequest r;
    r.id = "r" + std::to_string(i);
    r.prompt = tok->Encode("the quick brown fox " + std::to_string(i * 37), true, false);
    r.sampling.temperature = i % 3 == 0 ? 0.0f : 0.9f;
    r.sampling.top_k = 40;
    r.sampling.repetition_penalty = 1.1f;
    r.sampling.seed = 100 + i;
    r.max_tokens = 5 + (i * 7) % 20;
    r.ignore_eos = true;
    reqs.push_back(r);
  }
  std::vector<std::vector<int32_t>> solo;
  for (const GenerateRequest& r : reqs) {
    auto c = std::make_shared<testing::Collector>();
    M40_ASSERT_OK(sched->Submit(r, c).status());
    ASSERT_TRUE(c->Wait());
    M40_ASSERT_OK(c->status);
    solo.push_back(c->tokens);
  }
  std::vector<std::shared_ptr<testing::Collector>> cs;
  for (const GenerateRequest& r : reqs) {
    cs.push_back(std::make_shared<testing::Collector>());
    M40_ASSERT_OK(sched->Submit(r, cs.back()).status());
  }
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_TRUE(cs[i]->Wait());
    M40_ASSERT_OK(cs[i]->status);
    EXPECT_EQ(static_cast<int>(cs[i]->tokens.size()), reqs[i].max_tokens);
    EXPECT_EQ(cs[i]->tokens, solo[i]) << "request " << i;
  }
  sched->Shutdown();
}

// Decode steps replayed from CUDA graphs give the same bits as the same
// steps launched one kernel at a time, for logits and for device sampling.
TEST(CudaBackend, GraphReplayMatchesDirectLaunches) {
  M40_REQUIRE_CUDA_DEVICE();
  RandomModelSpec s = Small();
  s.seed = 61;
  s.n_vocab = 1500;
  const std::string path = m40llm::testing::TempDir() + "/graphs.gguf";
  M40_ASSERT_OK(WriteRandomLlama(s, path));
  M40_ASSERT_OK_AND_ASSIGN(auto file, GgufFile::Open(path));
  CudaBackendOptions o;
  o.base.max_slots = 3;
  o.base.ctx_per_slot = 600;  // several decode-attention splits
  o.decode_graphs = true;
  M40_ASSERT_OK_AND_ASSIGN(auto graphs, CudaBackend::Create(*file, o));
  o.decode_graphs = false;
  M40_ASSERT_OK_AND_ASSIGN(auto direct, CudaBackend::Create(*file, o));
  std::mt19937 rng(m40llm::testing::TestSeed());
  std::vector<std::vector<int32_t>> hist(3);
  for (int slot = 0; slot < 3; ++slot) {
    hist[slot] = RandomTokens(100 + 150 * slot, s.n_vocab, rng);
    ForwardOutput out;
    M40_ASSERT_OK(graphs->Forward({{{slot, 0, hist[slot], false}}}, &out));
    M40_ASSERT_OK(direct->Forward({{{slot, 0, hist[slot], false}}}, &out));
  }
  SamplingParams sp;
  sp.temperature = 0.9f;
  sp.top_k = 50;
  sp.n_logprobs = 3;
  for (int step = 0; step < 12; ++step) {
    // Alternate 3- and 2-sequence steps, logits and sampling: four graphs.
    const int n = step % 2 == 0 ? 3 : 2;
    std::vector<SeqChunk> batch;
    std::vector<SampleSpec> specs;
    for (int slot = 0; slot < n; ++slot) {
      batch.push_back({slot, static_cast<int>(hist[slot].size()) - 1, {&hist[slot].back(), 1},
                       false});
      specs.push_back({&sp, hist[slot], 0, static_cast<uint64_t>(step)});
    }
    if (step % 4 < 2) {
      ForwardOutput a, b;
      M40_ASSERT_OK(graphs->Forward(batch, &a));
      M40_ASSERT_OK(direct->Forward(batch, &b));
      ASSERT_EQ(a.logits.size(), b.logits.size());
      EXPECT_EQ(std::memcmp(a.logits.data(), b.logits.data(), a.logits.size() * sizeof(float)), 0)
          << "step " << step;
      for (int slot = 0; slot < n; ++slot) {
        hist[slot].push_back(Top1({a.logits.data() + slot * s.n_vocab,
                                   static_cast<size_t>(s.n_vocab)}).token);
      }
    } else {
      std::vector<SampleResult> a, b;
      M40_ASSERT_OK(graphs->ForwardSample(batch, specs, &a));
      M40_ASSERT_OK(direct->ForwardSample(batch, specs, &b));
      for (int slot = 0; slot < n; ++slot) {
        EXPECT_EQ(a[slot].token, b[slot].token) << "step " << step;
        EXPECT_EQ(a[slot].logprob, b[slot].logprob) << "step " << step;
        hist[slot].push_back(a[slot].token);
      }
    }
  }
}

// ---- memory plan ----------------------------------------------------------------

ModelConfig TinyLlamaShape() {
  ModelConfig c;
  c.n_vocab = 32000;
  c.n_embd = 2048;
  c.n_layer = 22;
  c.n_head = 32;
  c.n_head_kv = 4;
  c.head_dim = 64;
  c.n_ff = 5632;
  c.n_ctx_train = 2048;
  c.n_rot = 64;
  return c;
}

TEST(CudaMemoryPlan, CountsEveryWeightOnceAndTheKvCache) {
  const ModelConfig c = TinyLlamaShape();
  CudaBackendOptions o;
  o.base.max_slots = 8;
  o.base.ctx_per_slot = 2048;
  const CudaMemoryPlan p = PlanCudaMemory(c, o, 1ull << 40, 1ull << 40);
  // Parameters of TinyLlama-1.1B: embedding and output 32000 x 2048 each; per
  // layer q, o 2048 x 2048, k, v 256 x 2048, gate, up, down 5632 x 2048; norms.
  const uint64_t matrices = 2ull * 32000 * 2048 +
                            22ull * (2 * 2048 * 2048 + 2 * 256 * 2048 + 3 * 5632 * 2048);
  const uint64_t norms = 22ull * 2 * 2048 + 2048;
  EXPECT_EQ(p.weights, matrices * 2 + norms * 4);
  // K and V: 22 layers x 4 heads x 64 dims x FP16 per position.
  EXPECT_EQ(p.kv_bytes_per_position, 2ull * 22 * 4 * 64 * 2);
  EXPECT_EQ(p.kv_cache, p.kv_bytes_per_position * 8 * 2048);
  EXPECT_GT(p.scratch, 0u);
}

TEST(CudaMemoryPlan, RefusalNamesTheNumbersAndWhatFits) {
  const ModelConfig c = TinyLlamaShape();
  CudaBackendOptions o;
  o.base.max_slots = 16;
  o.base.ctx_per_slot = 2048;
  const CudaMemoryPlan full = PlanCudaMemory(c, o, 0, 0);
  // Free memory for exactly 3 slots of 2048 positions (and half a slot more).
  const uint64_t per_slot = full.kv_bytes_per_position * 2048;
  const uint64_t free = full.weights + full.scratch + full.reserve + 3 * per_slot + per_slot / 2;
  const CudaMemoryPlan p = PlanCudaMemory(c, o, free, 24ull << 30);
  const absl::Status s = CheckCudaPlanFits(p, c, o, "test device");
  ASSERT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("test device"), std::string::npos) << s;
  EXPECT_NE(s.message().find("--max-batch 3 at context 2048"), std::string::npos) << s;
  // 3.5 slots of 2048 positions spread over 16 slots: 448 positions each.
  EXPECT_NE(s.message().find("--ctx-per-slot 448 at batch 16"), std::string::npos) << s;
  o.base.max_slots = 3;
  EXPECT_TRUE(CheckCudaPlanFits(PlanCudaMemory(c, o, free, 24ull << 30), c, o, "d").ok());
}

TEST(CudaBackend, RefusesWhatDoesNotFitBeforeAllocating) {
  M40_REQUIRE_CUDA_DEVICE();
  RandomModelSpec s = Small();
  const std::string path = m40llm::testing::TempDir() + "/cuda_backend_refuse.gguf";
  M40_ASSERT_OK(WriteRandomLlama(s, path));
  M40_ASSERT_OK_AND_ASSIGN(auto file, GgufFile::Open(path));
  CudaBackendOptions o;
  o.base.max_slots = 256;
  o.base.ctx_per_slot = 1 << 24;  // 256 x 16M positions x 1 KiB: far beyond any card
  auto b = CudaBackend::Create(*file, o);
  ASSERT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted) << b.status();
  EXPECT_NE(b.status().message().find("does not fit"), std::string::npos) << b.status();
  EXPECT_NE(b.status().message().find("--max-batch"), std::string::npos) << b.status();
  o.base.max_slots = 1;
  o.base.ctx_per_slot = 64;
  o.device = 999;
  b = CudaBackend::Create(*file, o);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument) << b.status();
  // The device is still usable after both refusals.
  o.device = 0;
  M40_ASSERT_OK_AND_ASSIGN(auto ok, CudaBackend::Create(*file, o));
  std::vector<int32_t> t = {1, 2, 3};
  ForwardOutput out;
  SeqChunk chunk{0, 0, t, false};
  M40_ASSERT_OK(ok->Forward({&chunk, 1}, &out));
  EXPECT_TRUE(ok->health().ok());
}

TEST(CudaBackend, RejectsBadBatchesAndStaysHealthy) {
  M40_REQUIRE_CUDA_DEVICE();
  Pair p;
  MakePair(Small(), 2, 32, 512, &p);
  if (HasFatalFailure()) return;
  std::vector<int32_t> bad = {1, 1 << 30};
  ForwardOutput out;
  SeqChunk c{0, 0, bad, false};
  EXPECT_EQ(p.cuda->Forward({&c, 1}, &out).code(), absl::StatusCode::kInvalidArgument);
  std::vector<int32_t> long_prompt(40, 1);
  SeqChunk d{1, 0, long_prompt, false};
  EXPECT_FALSE(p.cuda->Forward({&d, 1}, &out).ok());
  EXPECT_TRUE(p.cuda->health().ok());
  std::vector<int32_t> t = {3, 4};
  ExpectSameLogits(p, {{0, 0, t, true}}, kTol, "after rejections");
}

}  // namespace
}  // namespace m40llm
