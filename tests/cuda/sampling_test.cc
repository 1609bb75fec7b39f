// Sampling kernel vs m40llm::Sample() (engine/sampler.h) on fresh random
// logits: gaussian at several scales, peaked, exact ties (few distinct values,
// -0 beside +0, all equal), and rows with NaN, -inf and +inf entries; n_vocab
// 1, 2, 7, 1000, 32000, 128256; every parameter alone and random
// combinations, with histories holding repeats and out-of-range ids; batches
// of sequences with different parameters, streams and steps in one launch.
//
// Tolerances. Tokens must be equal, except where the host side (a double
// reimplementation of the walk over the sorted order, below) shows that a
// truncation level (top_p * W, or a weight against min_p) or the draw u * W'
// lands within kBoundaryRel of a cumulative-weight boundary: the device's
// expf is within 2 ulp (2.4e-7 relative) of the host's, so such a case may
// legitimately fall on the other side. Then a neighbour of the host's token
// in the sorted order is accepted (any kept token, plus one, for a
// truncation boundary), and the cases are counted and printed (expected ~0).
// Log-probabilities (chosen and top list) agree to 1e-5 absolute; the top
// list's ids exactly. Outputs are poisoned before every launch.
#include "cuda/sampling.cuh"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "engine/philox.h"
#include "engine/sampler.h"
#include "gtest/gtest.h"
#include "tests/cuda/cuda_test_util.h"

namespace m40llm::gpu {
namespace {

using m40llm::testing::ToDevice;
using m40llm::testing::ToHost;

constexpr double kLogprobTolerance = 1e-5;
constexpr double kBoundaryRel = 1e-6;
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

enum class Dist { kGaussian, kPeaked, kTies, kSpecial, kFlat };
constexpr Dist kAllDists[] = {Dist::kGaussian, Dist::kPeaked, Dist::kTies, Dist::kSpecial,
                              Dist::kFlat};

const char* DistName(Dist d) {
  switch (d) {
    case Dist::kGaussian:
      return "gaussian";
    case Dist::kPeaked:
      return "peaked";
    case Dist::kTies:
      return "ties";
    case Dist::kSpecial:
      return "special";
    case Dist::kFlat:
      return "flat";
  }
  return "?";
}

std::vector<float> MakeLogits(std::mt19937& rng, int n, Dist d) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  std::uniform_int_distribution<int> pick(0, n - 1);
  std::vector<float> l(n);
  switch (d) {
    case Dist::kGaussian: {
      const float scales[] = {0.3f, 1.0f, 3.0f, 10.0f};
      const float scale = scales[rng() % 4];
      for (float& x : l) x = normal(rng) * scale;
      break;
    }
    case Dist::kPeaked: {
      for (float& x : l) x = normal(rng) * 2.0f;
      const int spikes = 1 + static_cast<int>(rng() % 3);
      for (int k = 0; k < spikes; ++k) l[pick(rng)] = 8.0f + 17.0f * unit(rng);
      break;
    }
    case Dist::kTies: {
      const int kind = static_cast<int>(rng() % 4);
      if (kind == 0) {  // everything equal
        const float v = normal(rng);
        for (float& x : l) x = v;
      } else {  // a few distinct values; round() leaves -0 beside +0
        const float steps = kind == 1 ? 1.0f : (kind == 2 ? 2.0f : 0.25f);
        for (float& x : l) x = std::round(normal(rng) * steps) / steps;
      }
      break;
    }
    case Dist::kSpecial: {
      for (float& x : l) x = normal(rng) * 3.0f;
      const int kind = static_cast<int>(rng() % 10);
      if (kind == 0) {
        std::fill(l.begin(), l.end(), -kInf);
      } else if (kind == 1) {
        std::fill(l.begin(), l.end(), kNaN);
      } else {
        for (float& x : l) {
          const float r = unit(rng);
          if (r < 0.03f)
            x = kNaN;
          else if (r < 0.06f)
            x = -kInf;
        }
        if (kind <= 4) {
          const int n_inf = 1 + static_cast<int>(rng() % 3);
          for (int k = 0; k < n_inf; ++k) l[pick(rng)] = kInf;
        }
      }
      break;
    }
    case Dist::kFlat: {  // many tokens matter: large top-p sets
      for (float& x : l) x = normal(rng) * 0.2f;
      break;
    }
  }
  return l;
}


// SamplingParams with every default spelt out, and `seed`.
SamplingParams DefaultState(uint64_t seed) {
  SamplingParams s{};
  s.temperature = 1.0f;
  s.top_p = 1.0f;
  s.min_p = 0.0f;
  s.repetition_penalty = 1.0f;
  s.presence_penalty = 0.0f;
  s.frequency_penalty = 0.0f;
  s.top_k = 0;
  s.penalty_last_n = 64;
  s.seed = seed;
  s.n_logprobs = 0;
  return s;
}

template <typename T>
T OneOf(std::mt19937& rng, std::initializer_list<T> v) {
  return *(v.begin() + rng() % v.size());
}

SamplingParams RandomState(std::mt19937_64& rng64, std::mt19937& rng, int n) {
  SamplingParams s = DefaultState(rng64());
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  s.temperature = OneOf(rng, {0.0f, 0.3f, 1.0f, 2.0f, 0.05f + 3.0f * unit(rng)});
  s.top_k =
      OneOf(rng, {0, 0, 1, 5, 40, n, n + 7, 1 + static_cast<int>(rng() % n), std::min(n, 5000)});
  s.top_p = OneOf(rng, {1.0f, 1.0f, 0.1f, 0.9f, std::max(0.01f, unit(rng))});
  s.min_p = OneOf(rng, {0.0f, 0.0f, 0.05f, 0.3f * unit(rng)});
  s.repetition_penalty = OneOf(rng, {1.0f, 1.0f, 1.3f, 0.8f});
  s.presence_penalty = OneOf(rng, {0.0f, 0.0f, 0.5f, -0.5f});
  s.frequency_penalty = OneOf(rng, {0.0f, 0.0f, 0.3f, -0.2f});
  s.penalty_last_n = OneOf(rng, {0, -1, 64, static_cast<int>(rng() % 300)});
  s.n_logprobs = OneOf(rng, {0, 0, 5, 20, static_cast<int>(rng() % 21)});
  return s;
}

// Tokens the penalties should matter for (the highest logits, repeated) mixed
// with random ids and ids outside [0, n).
std::vector<int32_t> RandomHistory(std::mt19937& rng, const std::vector<float>& logits) {
  const int n = static_cast<int>(logits.size());
  const int len = OneOf(rng, {0, 1, 10, 64, 200, 1000});
  std::vector<int32_t> top(std::min(n, 8));
  std::vector<int32_t> all(n);
  std::iota(all.begin(), all.end(), 0);
  std::partial_sort(all.begin(), all.begin() + top.size(), all.end(), [&](int32_t a, int32_t b) {
    const float x = std::isnan(logits[a]) ? -kInf : logits[a];
    const float y = std::isnan(logits[b]) ? -kInf : logits[b];
    return x > y || (x == y && a < b);
  });
  std::copy(all.begin(), all.begin() + top.size(), top.begin());
  std::vector<int32_t> h(len);
  for (int32_t& t : h) {
    switch (rng() % 6) {
      case 0:
      case 1:
        t = top[rng() % top.size()];
        break;
      case 2:
        t = OneOf(rng, {-1, n, n + 5, INT_MAX, INT_MIN});
        break;
      default:
        t = static_cast<int32_t>(rng() % n);
        break;
    }
  }
  return h;
}

struct Case {
  std::string what;
  std::vector<float> logits;
  SamplingParams state;
  std::vector<int32_t> history;
  uint64_t stream = 0;
  int32_t step = 0;
};

// The sorted-order walk of engine/sampler.h in double, with the distance of
// every truncation and draw level from the cumulative-weight boundaries.
struct Walk {
  std::vector<int32_t> order;  // ids in the sorted order
  size_t kept = 0;             // kept prefix length
  size_t pos = 0;              // sorted position of the drawn token
  bool near_truncation = false;
  bool near_draw = false;
};

Walk WalkHost(const Case& c, float u) {
  const SamplingParams p = c.state;
  const size_t n = c.logits.size();
  std::vector<float> l(n);
  for (size_t i = 0; i < n; ++i) l[i] = std::isnan(c.logits[i]) ? -kInf : c.logits[i];
  ApplyPenalties(l, p, c.history, nullptr);
  Walk w;
  w.order.resize(n);
  std::iota(w.order.begin(), w.order.end(), 0);
  std::sort(w.order.begin(), w.order.end(),
            [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
  if (p.temperature == 0.0f) return w;
  const float lmax = l[w.order[0]];
  const size_t k_len = p.top_k > 0 ? std::min(n, static_cast<size_t>(p.top_k)) : n;
  std::vector<float> wt(k_len);
  double total = 0;
  size_t min_p_count = 0;
  for (size_t q = 0; q < k_len; ++q) {
    const float x = l[w.order[q]];
    wt[q] = x == lmax ? 1.0f : std::exp((x - lmax) / p.temperature);
    total += wt[q];
    min_p_count += wt[q] >= p.min_p;
    if (p.min_p > 0 && std::fabs(wt[q] - p.min_p) <= kBoundaryRel * p.min_p) {
      w.near_truncation = true;
    }
  }
  const size_t limit = std::max<size_t>(1, std::min(k_len, min_p_count));
  w.kept = limit;
  double cum = 0;
  const double level = static_cast<double>(p.top_p) * total;
  for (size_t q = 0; q < limit; ++q) {
    cum += wt[q];
    if (p.top_p < 1.0f && std::fabs(cum - level) <= kBoundaryRel * total) {
      w.near_truncation = true;
    }
    if (p.top_p < 1.0f && cum >= level && w.kept == limit) w.kept = q + 1;
  }
  double kept_w = 0;
  for (size_t q = 0; q < w.kept; ++q) kept_w += wt[q];
  const double target = static_cast<double>(u) * kept_w;
  cum = 0;
  bool found = false;
  for (size_t q = 0; q < w.kept; ++q) {
    cum += wt[q];
    if (std::fabs(cum - target) <= kBoundaryRel * kept_w) w.near_draw = true;
    if (!found && cum > target) {
      w.pos = q;
      found = true;
    }
  }
  return w;
}

// log-softmax of the raw (NaN -> -inf) logits, in double.
struct RawLogprobs {
  explicit RawLogprobs(const std::vector<float>& logits) : l(logits) {
    for (float& x : l) x = std::isnan(x) ? -kInf : x;
    max = *std::max_element(l.begin(), l.end());
    double sum = 0;
    for (const float x : l) sum += x == max ? 1.0 : std::exp(static_cast<double>(x) - max);
    log_z = std::log(sum);
  }
  double Of(int32_t t) const {
    if (l[t] == max) return -log_z;
    return static_cast<double>(l[t]) - max - log_z;
  }
  std::vector<float> l;
  float max;
  double log_z;
};

bool LogprobNear(double got, double want) {
  if (std::isinf(got) || std::isinf(want)) return got == want;
  return std::fabs(got - want) <= kLogprobTolerance;
}

struct Stats {
  int cases = 0;
  int near_boundary = 0;  // cases with a level within rounding of a boundary
  int neighbour = 0;      // of those, where the device picked a neighbour
  double worst_logprob = 0;
};

std::string Describe(const Case& c) {
  const SamplingParams& s = c.state;
  return absl::StrFormat(
      "%s n=%d T=%g top_k=%d top_p=%g min_p=%g rep=%g pres=%g freq=%g last_n=%d hist=%d "
      "logprobs=%d seed=%u stream=%u step=%d",
      c.what, static_cast<int>(c.logits.size()), s.temperature, s.top_k, s.top_p, s.min_p,
      s.repetition_penalty, s.presence_penalty, s.frequency_penalty, s.penalty_last_n,
      static_cast<int>(c.history.size()), s.n_logprobs, static_cast<unsigned>(s.seed),
      static_cast<unsigned>(c.stream), c.step);
}

void Check(const Case& c, const DeviceSample& got, SamplerScratch* scratch, Stats* st) {
  SCOPED_TRACE(Describe(c));
  const int n = static_cast<int>(c.logits.size());
  const SamplingParams p = c.state;
  ASSERT_TRUE(p.Validate(n).ok()) << p.Validate(n);
  const SampleResult want =
      Sample(c.logits, p, c.history, c.stream, static_cast<uint64_t>(c.step), scratch);
  ++st->cases;

  ASSERT_GE(got.token, 0);
  ASSERT_LT(got.token, n);
  if (got.token != want.token || p.temperature != 0.0f) {
    const float u = UniformFloat(p.seed, c.stream, static_cast<uint64_t>(c.step), 0);
    const Walk w = WalkHost(c, u);
    const bool near = w.near_truncation || w.near_draw;
    st->near_boundary += near;
    const bool walk_agrees = w.order[w.pos] == want.token;
    if (got.token != want.token) {
      ASSERT_NE(p.temperature, 0.0f)
          << "greedy token differs: got " << got.token << " want " << want.token;
      EXPECT_TRUE(near) << "token differs away from any boundary: got " << got.token << " want "
                        << want.token << " (host walk agrees with Sample: " << walk_agrees << ")";
      const size_t got_pos = std::find(w.order.begin(), w.order.end(), got.token) - w.order.begin();
      const size_t want_pos =
          std::find(w.order.begin(), w.order.end(), want.token) - w.order.begin();
      if (w.near_truncation) {
        EXPECT_LE(got_pos, w.kept) << "token outside the kept set (+1)";
      } else if (w.near_draw) {
        EXPECT_LE(std::max(got_pos, want_pos) - std::min(got_pos, want_pos), 1u)
            << "token not a neighbour of the host's";
      }
      ++st->neighbour;
    } else if (!near) {
      EXPECT_TRUE(walk_agrees) << "the test's host walk disagrees with Sample()";
    }
  }

  const RawLogprobs raw(c.logits);
  EXPECT_TRUE(LogprobNear(got.logprob, raw.Of(got.token)))
      << "logprob " << got.logprob << " want " << raw.Of(got.token);
  if (got.token == want.token) {
    EXPECT_TRUE(LogprobNear(got.logprob, want.logprob))
        << "logprob " << got.logprob << " Sample() " << want.logprob;
  }
  if (std::isfinite(got.logprob)) {
    st->worst_logprob = std::max(st->worst_logprob, std::fabs(got.logprob - raw.Of(got.token)));
  }
  ASSERT_EQ(got.n_top, static_cast<int>(want.top.size()));
  for (int i = 0; i < got.n_top; ++i) {
    EXPECT_EQ(got.top[i].token, want.top[i].token) << "top " << i;
    EXPECT_TRUE(LogprobNear(got.top[i].logprob, want.top[i].logprob))
        << "top " << i << ": " << got.top[i].logprob << " want " << want.top[i].logprob;
    if (std::isfinite(got.top[i].logprob)) {
      st->worst_logprob =
          std::max(st->worst_logprob,
                   std::fabs(static_cast<double>(got.top[i].logprob) - want.top[i].logprob));
    }
  }
  for (int i = got.n_top; i < kMaxEventLogprobs; ++i) EXPECT_EQ(got.top[i].token, -1);
}

// Runs the cases (one n_vocab) as one batch and checks each.
void RunBatch(const std::vector<Case>& cases, bool null_streams, Stats* st) {
  const int n_seq = static_cast<int>(cases.size());
  const int n = static_cast<int>(cases[0].logits.size());
  size_t stride = 1;
  bool any_history = false;
  for (const Case& c : cases) {
    stride = std::max(stride, c.history.size());
    any_history |= !c.history.empty();
  }
  std::vector<float> logits;
  std::vector<SamplingParams> states;
  std::vector<int32_t> history(n_seq * stride, -7);
  std::vector<int32_t> hist_len, steps;
  std::vector<uint64_t> streams;
  for (int s = 0; s < n_seq; ++s) {
    const Case& c = cases[s];
    logits.insert(logits.end(), c.logits.begin(), c.logits.end());
    states.push_back(c.state);
    std::copy(c.history.begin(), c.history.end(), history.begin() + s * stride);
    hist_len.push_back(static_cast<int32_t>(c.history.size()));
    streams.push_back(c.stream);
    steps.push_back(c.step);
  }
  M40_ASSERT_OK_AND_ASSIGN(auto d_logits, ToDevice(logits));
  M40_ASSERT_OK_AND_ASSIGN(auto d_states, ToDevice(states));
  M40_ASSERT_OK_AND_ASSIGN(auto d_history, ToDevice(history));
  M40_ASSERT_OK_AND_ASSIGN(auto d_hist_len, ToDevice(hist_len));
  M40_ASSERT_OK_AND_ASSIGN(auto d_streams, ToDevice(streams));
  M40_ASSERT_OK_AND_ASSIGN(auto d_steps, ToDevice(steps));
  M40_ASSERT_OK_AND_ASSIGN(auto d_ws, DeviceBuffer<char>::Allocate(SampleWorkspaceBytes(n_seq, n)));
  M40_ASSERT_OK_AND_ASSIGN(auto d_out, DeviceBuffer<DeviceSample>::Allocate(n_seq));
  M40_ASSERT_OK(d_out.FillBytes(0xff));
  M40_ASSERT_OK(d_ws.FillBytes(0xa5));  // the kernel must not rely on zeroed scratch
  M40_ASSERT_OK(LaunchSample({.logits = d_logits.get(),
                              .n_seq = n_seq,
                              .n_vocab = n,
                              .params = d_states.get(),
                              .history = any_history ? d_history.get() : nullptr,
                              .hist_stride = static_cast<int64_t>(stride),
                              .hist_len = any_history ? d_hist_len.get() : nullptr,
                              .streams = null_streams ? nullptr : d_streams.get(),
                              .steps = d_steps.get(),
                              .workspace = d_ws.get(),
                              .workspace_bytes = d_ws.bytes(),
                              .out = d_out.get()},
                             nullptr));
  M40_ASSERT_OK(gpu::CudaStatus(cudaDeviceSynchronize(), "sync", __FILE__, __LINE__));
  M40_ASSERT_OK_AND_ASSIGN(auto got, ToHost(d_out));
  SamplerScratch scratch;
  for (int s = 0; s < n_seq; ++s) {
    Case c = cases[s];
    if (null_streams) c.stream = 0;
    Check(c, got[s], &scratch, st);
  }
}

void Report(const char* name, const Stats& st) {
  std::printf(
      "%s: %d cases, %d with a level within %.0e of a weight boundary, %d of them sampled a "
      "neighbour; worst logprob error %.3g (tolerance %.0e)\n",
      name, st.cases, st.near_boundary, kBoundaryRel, st.neighbour, st.worst_logprob,
      kLogprobTolerance);
}

TEST(Sample, RandomParametersMatchCpuSampler) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  std::mt19937_64 rng64(seed);
  Stats st;
  struct Size {
    int n;
    int batches;
    int max_seqs;
  };
  for (const Size sz : {Size{1, 20, 8}, Size{2, 40, 8}, Size{7, 80, 8}, Size{1000, 80, 8},
                        Size{32000, 40, 8}, Size{128256, 12, 6}}) {
    for (int b = 0; b < sz.batches; ++b) {
      const int n_seq = 1 + static_cast<int>(rng() % sz.max_seqs);
      std::vector<Case> cases;
      for (int s = 0; s < n_seq; ++s) {
        Case c;
        const Dist d = kAllDists[rng() % std::size(kAllDists)];
        c.what = DistName(d);
        c.logits = MakeLogits(rng, sz.n, d);
        c.state = RandomState(rng64, rng, sz.n);
        c.history = RandomHistory(rng, c.logits);
        c.stream = rng() % 4 == 0 ? rng64() : rng() % 16;
        c.step = static_cast<int32_t>(rng() % 100000);
        cases.push_back(std::move(c));
      }
      RunBatch(cases, rng() % 4 == 0, &st);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
  Report("random parameters", st);
}

// Each parameter alone (the others at their defaults), all in one batch per
// (n_vocab, distribution).
TEST(Sample, EachParameterAloneMatchesCpuSampler) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  std::mt19937_64 rng64(seed);
  Stats st;
  for (const int n : {1, 2, 7, 1000, 32000, 128256}) {
    for (const Dist d : kAllDists) {
      const std::vector<float> logits = MakeLogits(rng, n, d);
      std::vector<SamplingParams> states;
      auto add = [&](auto&& set) {
        SamplingParams s = DefaultState(rng64());
        set(s);
        states.push_back(s);
      };
      add([](SamplingParams&) {});
      add([](SamplingParams& s) { s.temperature = 0.0f; });
      for (const float t : {0.3f, 1.0f, 2.0f}) add([&](SamplingParams& s) { s.temperature = t; });
      for (const int k : {1, 5, 40, n}) add([&](SamplingParams& s) { s.top_k = k; });
      for (const float tp : {0.1f, 0.9f}) add([&](SamplingParams& s) { s.top_p = tp; });
      add([](SamplingParams& s) { s.min_p = 0.05f; });
      for (const int last_n : {0, -1, 64}) {
        add([&](SamplingParams& s) {
          s.repetition_penalty = 1.5f;
          s.penalty_last_n = last_n;
        });
        add([&](SamplingParams& s) {
          s.presence_penalty = 1.0f;
          s.penalty_last_n = last_n;
        });
        add([&](SamplingParams& s) {
          s.frequency_penalty = 0.7f;
          s.penalty_last_n = last_n;
        });
      }
      for (const int lp : {5, 20}) add([&](SamplingParams& s) { s.n_logprobs = lp; });
      add([](SamplingParams& s) {  // everything at once
        s.temperature = 0.8f;
        s.top_k = 40;
        s.top_p = 0.9f;
        s.min_p = 0.05f;
        s.repetition_penalty = 1.1f;
        s.presence_penalty = 0.3f;
        s.frequency_penalty = 0.2f;
        s.n_logprobs = 5;
      });
      std::vector<Case> cases;
      for (const SamplingParams& s : states) {
        Case c;
        c.what = std::string("alone/") + DistName(d);
        c.logits = logits;
        c.state = s;
        c.history = RandomHistory(rng, logits);
        c.stream = rng() % 16;
        c.step = static_cast<int32_t>(rng() % 1000);
        cases.push_back(std::move(c));
      }
      RunBatch(cases, false, &st);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
  Report("each parameter alone", st);
}

// Candidate sets too large for one sort in shared memory: flat logits with
// top-p and min-p over the whole vocabulary, large top-k, and ties over
// thousands of tokens (the search then splits on token ids).
TEST(Sample, LargeCandidateSetsMatchCpuSampler) {
  M40_REQUIRE_CUDA_DEVICE();
  const uint32_t seed = m40llm::testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  std::mt19937_64 rng64(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Stats st;
  for (const int n : {32000, 128256}) {
    std::vector<Case> cases;
    for (int rep = 0; rep < 6; ++rep) {
      for (const int variant : {0, 1, 2, 3, 4, 5, 6, 7}) {
        Case c;
        c.logits.resize(n);
        const float scale = OneOf(rng, {0.05f, 0.3f, 1.0f});
        for (float& x : c.logits) x = normal(rng) * scale;
        if (variant >= 6) {  // ties: a handful of values over the whole row
          for (float& x : c.logits) x = std::round(x * 4.0f / scale) / 4.0f;
        }
        SamplingParams& s = c.state;
        s = DefaultState(rng64());
        s.temperature = OneOf(rng, {0.7f, 1.0f, 2.0f});
        switch (variant) {
          case 0:
            s.top_p = OneOf(rng, {0.5f, 0.9f, 0.99f});
            break;
          case 1:
            s.min_p = OneOf(rng, {0.05f, 0.5f, 0.9f});
            break;
          case 2:
            s.top_k = OneOf(rng, {4097, 5000, 20000});
            s.top_p = 0.9f;
            break;
          case 3:
            s.top_k = 20000;
            s.min_p = 0.2f;
            break;
          case 4:
            s.top_k = 3000;
            s.top_p = 0.95f;
            s.min_p = 0.1f;
            break;
          case 5:
            break;  // the whole vocabulary
          case 6:
            s.top_k = OneOf(rng, {40, 5000});
            break;
          case 7:
            s.top_p = 0.7f;
            s.min_p = 0.3f;
            break;
        }
        s.n_logprobs = OneOf(rng, {0, 20});
        c.what = absl::StrFormat("large/%d scale=%g", variant, scale);
        c.history = RandomHistory(rng, c.logits);
        s.repetition_penalty = OneOf(rng, {1.0f, 1.2f});
        c.stream = rng() % 16;
        c.step = static_cast<int32_t>(rng() % 1000);
        cases.push_back(std::move(c));
      }
    }
    RunBatch(cases, false, &st);
    if (::testing::Test::HasFatalFailure()) return;
  }
  Report("large candidate sets", st);
}

TEST(Sample, RejectsBadArguments) {
  float f = 0;
  SamplingParams s{};
  int32_t i = 0;
  DeviceSample o{};
  char ws[64];
  // Only argument checks run here: every call fails before any launch. The
  // status code of a call whose arguments are valid but for `edit`:
  const SampleArgs valid{.logits = &f,
                         .n_seq = 1,
                         .n_vocab = 4,
                         .params = &s,
                         .steps = &i,
                         .workspace = ws,
                         .workspace_bytes = 64,
                         .out = &o};
  auto code = [&](auto edit) {
    SampleArgs a = valid;
    edit(a);
    return LaunchSample(a, nullptr).code();
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(code([](SampleArgs& a) { a.n_seq = -1; }), kInvalid);
  EXPECT_EQ(code([](SampleArgs& a) { a.n_vocab = 0; }), kInvalid);
  EXPECT_EQ(code([](SampleArgs& a) { a.n_vocab = kSampleMaxVocab + 1; }), kInvalid);
  EXPECT_EQ(code([](SampleArgs& a) { a.logits = nullptr; }), kInvalid);
  EXPECT_EQ(code([&](SampleArgs& a) {
              a.history = &i;
              a.hist_stride = 1;
            }),
            kInvalid);
  EXPECT_EQ(code([](SampleArgs& a) { a.workspace_bytes = SampleWorkspaceBytes(1, 4) - 1; }),
            kInvalid);
  EXPECT_EQ(code([](SampleArgs& a) { a.workspace = nullptr; }), kInvalid);
  SampleArgs none = valid;
  none.n_seq = 0;
  EXPECT_TRUE(LaunchSample(none, nullptr).ok());
  EXPECT_EQ(SampleWorkspaceBytes(3, 1000), 3u * 1000u * 8u);
}

}  // namespace
}  // namespace m40llm::gpu
