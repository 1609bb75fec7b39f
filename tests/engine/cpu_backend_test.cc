// The CPU backend against an independent, deliberately naive double-precision
// llama forward pass (full recompute, no cache), on random models written by
// the project's own GGUF writer; plus KV-cache, batching and validation checks.
#include "engine/cpu_backend.h"

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "engine/demo_model.h"
#include "engine/dequant.h"
#include "engine/fp16.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "gtest/gtest.h"
#include "tests/support/test_support.h"

namespace m40llm {
namespace {

// Row r of a weight matrix as doubles: FP16 values, or quantised blocks
// dequantised (the dequantiser is checked against llama.cpp's own output in
// conformance_dequant_test).
std::vector<double> Row(const WeightMatrix& m, int64_t r) {
  std::vector<float> f(static_cast<size_t>(m.cols));
  if (m.quantised()) {
    EXPECT_TRUE(DequantizeToF32(m.type, m.blocks.data() + r * m.row_bytes, f.size(), f.data()).ok());
  } else {
    for (int64_t c = 0; c < m.cols; ++c) f[c] = HalfToFloat(m.data[static_cast<size_t>(r * m.cols + c)]);
  }
  return std::vector<double>(f.begin(), f.end());
}

// y = W x for a (rows, cols) matrix.
std::vector<double> MatVec(const WeightMatrix& m, const std::vector<double>& x) {
  std::vector<double> y(m.rows, 0.0);
  for (int64_t r = 0; r < m.rows; ++r) {
    const std::vector<double> w = Row(m, r);
    for (int64_t c = 0; c < m.cols; ++c) y[r] += w[c] * x[c];
  }
  return y;
}

std::vector<double> Norm(const std::vector<double>& x, const std::vector<float>& w, double eps) {
  double ms = 0;
  for (double v : x) ms += v * v;
  ms /= x.size();
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] / std::sqrt(ms + eps) * w[i];
  return y;
}

// Rotates pairs as complex numbers, (a + ib) * e^{i theta}: adjacent pairs
// (v[2i], v[2i+1]), or with NeoX RoPE (v[i], v[i + n_rot/2]).
void RotateHead(double* v, const ModelConfig& c, const std::vector<float>& ff, int pos) {
  const int half = c.n_rot / 2;
  for (int i = 0; i < half; ++i) {
    const double inv_freq = 1.0 / std::pow(c.rope_freq_base, static_cast<double>(2 * i) / c.n_rot);
    double theta = pos * inv_freq * c.rope_freq_scale;
    if (!ff.empty()) theta /= ff[i];
    double& a = v[c.rope_neox ? i : 2 * i];
    double& b = v[c.rope_neox ? i + half : 2 * i + 1];
    const double a0 = a, b0 = b;
    a = a0 * std::cos(theta) - b0 * std::sin(theta);
    b = a0 * std::sin(theta) + b0 * std::cos(theta);
  }
}

// y + bias (bias empty: y).
std::vector<double> Biased(std::vector<double> y, const std::vector<float>& bias) {
  for (size_t i = 0; i < bias.size(); ++i) y[i] += bias[i];
  return y;
}

double RoundF16(double v) { return HalfToFloat(FloatToHalf(static_cast<float>(v))); }

// Logits (T, n_vocab) for one sequence, recomputing attention over all
// previous positions. K and V are rounded to FP16, the documented storage
// policy of the cache, and nothing else is.
std::vector<std::vector<double>> NaiveForward(const LlamaModel& m, const std::vector<int32_t>& toks) {
  const ModelConfig& c = m.config();
  const int T = static_cast<int>(toks.size());
  const int hd = c.head_dim;
  std::vector<std::vector<double>> x(T, std::vector<double>(c.n_embd));
  for (int t = 0; t < T; ++t) {
    x[t] = Row(m.token_embd, toks[t]);
  }
  for (int l = 0; l < c.n_layer; ++l) {
    const LayerWeights& w = m.layers[l];
    std::vector<std::vector<double>> q(T), k(T), v(T);
    for (int t = 0; t < T; ++t) {
      const auto h = Norm(x[t], w.attn_norm, c.rms_eps);
      q[t] = Biased(MatVec(w.wq, h), w.bq);
      k[t] = Biased(MatVec(w.wk, h), w.bk);
      v[t] = Biased(MatVec(w.wv, h), w.bv);
      for (int hh = 0; hh < c.n_head; ++hh) RotateHead(&q[t][hh * hd], c, m.rope_freqs, t);
      for (int g = 0; g < c.n_head_kv; ++g) RotateHead(&k[t][g * hd], c, m.rope_freqs, t);
      for (double& e : k[t]) e = RoundF16(e);
      for (double& e : v[t]) e = RoundF16(e);
    }
    for (int t = 0; t < T; ++t) {
      std::vector<double> att(c.q_dim(), 0.0);
      for (int hh = 0; hh < c.n_head; ++hh) {
        const int g = hh * c.n_head_kv / c.n_head;
        std::vector<double> s(t + 1);
        double mx = -1e300;
        for (int j = 0; j <= t; ++j) {
          double d = 0;
          for (int e = 0; e < hd; ++e) d += q[t][hh * hd + e] * k[j][g * hd + e];
          s[j] = d / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, s[j]);
        }
        double z = 0;
        for (double& e : s) z += (e = std::exp(e - mx));
        for (int j = 0; j <= t; ++j) {
          for (int e = 0; e < hd; ++e) att[hh * hd + e] += s[j] / z * v[j][g * hd + e];
        }
      }
      const auto o = MatVec(w.wo, att);
      for (int i = 0; i < c.n_embd; ++i) x[t][i] += o[i];
      const auto h = Norm(x[t], w.ffn_norm, c.rms_eps);
      auto gate = MatVec(w.w_gate, h);
      const auto up = MatVec(w.w_up, h);
      for (size_t i = 0; i < gate.size(); ++i) {
        gate[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
      }
      const auto d = MatVec(w.w_down, gate);
      for (int i = 0; i < c.n_embd; ++i) x[t][i] += d[i];
    }
  }
  std::vector<std::vector<double>> logits(T);
  for (int t = 0; t < T; ++t) logits[t] = MatVec(m.lm_head(), Norm(x[t], m.output_norm, c.rms_eps));
  return logits;
}

struct TestModel {
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<LlamaModel> model;
};

TestModel MakeModel(RandomModelSpec spec) {
  TestModel tm;
  const std::string path = testing::TempDir() + "/model.gguf";
  absl::Status s = WriteRandomLlama(spec, path);
  EXPECT_TRUE(s.ok()) << s;
  auto f = GgufFile::Open(path);
  EXPECT_TRUE(f.ok()) << f.status();
  if (!f.ok()) return tm;
  tm.file = std::move(*f);
  auto m = LlamaModel::Load(*tm.file);
  EXPECT_TRUE(m.ok()) << m.status();
  if (m.ok()) tm.model = std::move(*m);
  return tm;
}

RandomModelSpec SmallSpec() {
  RandomModelSpec s;
  s.n_embd = 64;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_head_kv = 2;
  s.n_ff = 96;
  s.n_ctx = 64;
  s.seed = 7;
  return s;
}

std::vector<int32_t> RandomTokens(int n, int n_vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, n_vocab - 1);
  std::vector<int32_t> t(n);
  for (int32_t& v : t) v = d(rng);
  return t;
}

// Runs one chunk and returns its logits (poisoned first, so unwritten rows show).
std::vector<float> RunChunk(CpuBackend& b, int slot, int pos, const std::vector<int32_t>& toks,
                       bool all) {
  ForwardOutput out;
  out.logits.assign(1, NAN);
  SeqChunk c{slot, pos, toks, all};
  absl::Status s = b.Forward({&c, 1}, &out);
  EXPECT_TRUE(s.ok()) << s;
  return out.logits;
}

void ExpectMatchesNaive(const RandomModelSpec& spec, double tol) {
  TestModel tm = MakeModel(spec);
  ASSERT_NE(tm.model, nullptr);
  const ModelConfig& c = tm.model->config();
  BackendOptions o;
  o.max_slots = 2;
  o.ctx_per_slot = 32;
  auto b = CpuBackend::Create(tm.model.get(), o);
  ASSERT_TRUE(b.ok()) << b.status();
  const auto toks = RandomTokens(12, c.n_vocab, static_cast<uint32_t>(spec.seed));
  const std::vector<float> got = RunChunk(**b, 1, 0, toks, true);
  const auto want = NaiveForward(*tm.model, toks);
  ASSERT_EQ(got.size(), toks.size() * c.n_vocab);
  for (size_t t = 0; t < toks.size(); ++t) {
    std::vector<float> w(want[t].begin(), want[t].end());
    EXPECT_LE(testing::RelL2(&got[t * c.n_vocab], w.data(), c.n_vocab), tol) << "position " << t;
  }
}

// FP32 arithmetic against a double reference with the same FP16 KV rounding:
// differences are FP32 accumulation order plus rare FP16 rounding flips.
constexpr double kNaiveTol = 2e-4;

TEST(CpuBackend, MatchesNaiveGqa) { ExpectMatchesNaive(SmallSpec(), kNaiveTol); }

TEST(CpuBackend, MatchesNaiveMhaAndMqa) {
  RandomModelSpec s = SmallSpec();
  s.n_head_kv = s.n_head;
  ExpectMatchesNaive(s, kNaiveTol);
  s.n_head_kv = 1;
  s.seed = 11;
  ExpectMatchesNaive(s, kNaiveTol);
}

TEST(CpuBackend, MatchesNaiveWithRopeScalingFreqFactorsAndTiedOutput) {
  RandomModelSpec s = SmallSpec();
  s.rope_scale_linear = 4.0f;
  s.rope_freqs = true;
  s.tied_output = true;
  s.rope_freq_base = 500000.0f;
  ExpectMatchesNaive(s, kNaiveTol);
}

TEST(CpuBackend, MatchesNaiveQwen2WithBiasesNeoxRopeAndTiedOutput) {
  RandomModelSpec s = SmallSpec();
  s.arch = "qwen2";
  s.tied_output = true;
  s.rope_freq_base = 1000000.0f;
  TestModel tm = MakeModel(s);
  ASSERT_NE(tm.model, nullptr);
  ASSERT_TRUE(tm.model->config().qkv_bias);
  ASSERT_TRUE(tm.model->config().rope_neox);
  ASSERT_EQ(tm.model->layers[0].bq.size(), static_cast<size_t>(tm.model->config().q_dim()));
  ExpectMatchesNaive(s, kNaiveTol);
}

TEST(CpuBackend, MatchesNaiveQuantised) {
  RandomModelSpec s = SmallSpec();
  s.weight_type = GgmlType::kQ8_0;
  ExpectMatchesNaive(s, kNaiveTol);
}

// Every block type, held natively, against the same file dequantised to
// FP16 at load: the same model up to FP16 rounding of the weights, in a
// third of the memory or less; native weights are the file's own bytes.
TEST(CpuBackend, NativeQuantisedWeightsAgreeWithF16Weights) {
  for (GgmlType t : {GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1,
                     GgmlType::kQ8_0, GgmlType::kQ2_K, GgmlType::kQ3_K, GgmlType::kQ4_K,
                     GgmlType::kQ5_K, GgmlType::kQ6_K}) {
    SCOPED_TRACE(TypeName(t));
    RandomModelSpec spec = SmallSpec();
    spec.n_embd = 256;  // K-quants need rows of 256
    spec.n_ff = 512;
    spec.n_head = 8;
    spec.n_head_kv = 4;
    spec.weight_type = t;
    TestModel tm = MakeModel(spec);
    ASSERT_NE(tm.model, nullptr);
    EXPECT_TRUE(tm.model->layers[0].wq.quantised());
    EXPECT_EQ(tm.model->layers[0].wq.blocks.size(), tm.file->FindTensor("blk.0.attn_q.weight")->n_bytes);
    auto f16 = LlamaModel::Load(*tm.file, nullptr, 0, WeightFormat::kF16);
    ASSERT_TRUE(f16.ok()) << f16.status();
    EXPECT_FALSE((*f16)->layers[0].wq.quantised());
    EXPECT_LT(3 * tm.model->weight_bytes(), 2 * (*f16)->weight_bytes());
    BackendOptions o;
    o.max_slots = 1;
    o.ctx_per_slot = 16;
    auto native = CpuBackend::Create(tm.model.get(), o);
    auto half = CpuBackend::Create(f16->get(), o);
    ASSERT_TRUE(native.ok() && half.ok());
    const auto toks = RandomTokens(6, tm.model->config().n_vocab, 5);
    const std::vector<float> a = RunChunk(**native, 0, 0, toks, true);
    const std::vector<float> b = RunChunk(**half, 0, 0, toks, true);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_LE(testing::RelL2(a.data(), b.data(), a.size()), 5e-3);
  }
}

TEST(CpuBackend, DecodeAfterPrefillEqualsOnePrefill) {
  TestModel tm = MakeModel(SmallSpec());
  ASSERT_NE(tm.model, nullptr);
  const int V = tm.model->config().n_vocab;
  BackendOptions o;
  o.max_slots = 2;
  o.ctx_per_slot = 32;
  auto b = CpuBackend::Create(tm.model.get(), o);
  ASSERT_TRUE(b.ok());
  const auto toks = RandomTokens(10, V, 3);
  const auto all = RunChunk(**b, 0, 0, toks, true);
  // Slot 1: prefill 4, then decode one token at a time.
  std::vector<int32_t> head(toks.begin(), toks.begin() + 4);
  auto last = RunChunk(**b, 1, 0, head, false);
  EXPECT_LE(testing::RelL2(last.data(), &all[3 * V], V), 1e-6);
  for (int t = 4; t < 10; ++t) {
    last = RunChunk(**b, 1, t, {toks[t]}, false);
    EXPECT_LE(testing::RelL2(last.data(), &all[t * V], V), 1e-6) << "position " << t;
  }
}

TEST(CpuBackend, BatchedSequencesDoNotInteract) {
  TestModel tm = MakeModel(SmallSpec());
  ASSERT_NE(tm.model, nullptr);
  const int V = tm.model->config().n_vocab;
  BackendOptions o;
  o.max_slots = 3;
  o.ctx_per_slot = 32;
  auto b = CpuBackend::Create(tm.model.get(), o);
  ASSERT_TRUE(b.ok());
  const auto a = RandomTokens(7, V, 5), c = RandomTokens(3, V, 6);
  const auto alone_a = RunChunk(**b, 0, 0, a, false);
  const auto alone_c = RunChunk(**b, 1, 0, c, false);
  ForwardOutput out;
  SeqChunk chunks[2] = {{2, 0, c, false}, {0, 0, a, false}};
  ASSERT_TRUE((*b)->Forward(chunks, &out).ok());
  ASSERT_EQ(out.rows, 2);
  EXPECT_EQ(std::vector<float>(out.logits.begin(), out.logits.begin() + V), alone_c);
  EXPECT_EQ(std::vector<float>(out.logits.begin() + V, out.logits.end()), alone_a);
}

TEST(CpuBackend, KvCacheLayoutIsLayerSlotHeadPosDim) {
  TestModel tm = MakeModel(SmallSpec());
  ASSERT_NE(tm.model, nullptr);
  const ModelConfig& c = tm.model->config();
  BackendOptions o;
  o.max_slots = 2;
  o.ctx_per_slot = 16;
  auto b = CpuBackend::Create(tm.model.get(), o);
  ASSERT_TRUE(b.ok());
  const size_t hd = c.head_dim;
  EXPECT_EQ((*b)->KvIndex(0, 0, 0, 1), hd);
  EXPECT_EQ((*b)->KvIndex(0, 0, 1, 0), 16 * hd);
  EXPECT_EQ((*b)->KvIndex(0, 1, 0, 0), 16 * hd * c.n_head_kv);
  EXPECT_EQ((*b)->KvIndex(1, 0, 0, 0), 16 * hd * c.n_head_kv * 2);
  // Writing slot 1 leaves slot 0's cache untouched (all zero).
  RunChunk(**b, 1, 0, RandomTokens(5, c.n_vocab, 9), false);
  for (int l = 0; l < c.n_layer; ++l) {
    for (int g = 0; g < c.n_head_kv; ++g) {
      const uint16_t* k0 = (*b)->k_cache() + (*b)->KvIndex(l, 0, g, 0);
      for (size_t i = 0; i < 16 * hd; ++i) ASSERT_EQ(k0[i], 0);
      const uint16_t* k1 = (*b)->k_cache() + (*b)->KvIndex(l, 1, g, 4);
      bool any = false;
      for (size_t i = 0; i < hd; ++i) any |= k1[i] != 0;
      EXPECT_TRUE(any) << "layer " << l << " head " << g;
    }
  }
}

TEST(CpuBackend, RejectsBadBatches) {
  TestModel tm = MakeModel(SmallSpec());
  ASSERT_NE(tm.model, nullptr);
  BackendOptions o;
  o.max_slots = 2;
  o.ctx_per_slot = 8;
  auto b = CpuBackend::Create(tm.model.get(), o);
  ASSERT_TRUE(b.ok());
  ForwardOutput out;
  std::vector<int32_t> ok_toks = {1, 2, 3};
  std::vector<int32_t> bad_tok = {1, tm.model->config().n_vocab};
  SeqChunk slot_oob{2, 0, ok_toks, false};
  EXPECT_EQ((*b)->Forward({&slot_oob, 1}, &out).code(), absl::StatusCode::kInvalidArgument);
  SeqChunk past_ctx{0, 6, ok_toks, false};
  EXPECT_EQ((*b)->Forward({&past_ctx, 1}, &out).code(), absl::StatusCode::kOutOfRange);
  SeqChunk bad{0, 0, bad_tok, false};
  EXPECT_EQ((*b)->Forward({&bad, 1}, &out).code(), absl::StatusCode::kInvalidArgument);
  SeqChunk twice[2] = {{0, 0, ok_toks, false}, {0, 3, ok_toks, false}};
  EXPECT_EQ((*b)->Forward(twice, &out).code(), absl::StatusCode::kInvalidArgument);
  SeqChunk empty{0, 0, {}, false};
  EXPECT_EQ((*b)->Forward({&empty, 1}, &out).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace m40llm
