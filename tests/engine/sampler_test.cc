// Tests for the Philox generator and the token sampler. Expected values come
// from published Philox known-answer vectors or from reference computations
// written independently here (full sorts, double precision); statistical
// tests use chi-square bounds at a false-alarm rate of about 1e-6.
#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "engine/philox.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace m40llm {
namespace {

using ::testing::HasSubstr;

constexpr float kInf = std::numeric_limits<float>::infinity();

// ---------------------------------------------------------------------------
// Statistics helpers.

// Upper chi-square quantile by the Wilson-Hilferty approximation; z = 4.753
// is the standard normal quantile for a one-sided tail of 1e-6.
double ChiSquareBound(int df) {
  constexpr double kZ = 4.753;
  const double a = 2.0 / (9.0 * df);
  return df * std::pow(1.0 - a + kZ * std::sqrt(a), 3.0);
}

struct ChiSquare {
  double stat = 0;
  int df = 0;
};

// Pearson chi-square of `counts` against `probs` over `n` draws, pooling the
// bins whose expected count is under 5 into one. Bins of zero probability
// must be empty; that is checked by the callers, not here.
ChiSquare PearsonChiSquare(const std::vector<int64_t>& counts,
                           const std::vector<double>& probs, int64_t n) {
  ChiSquare out;
  double pooled_expected = 0, pooled_observed = 0;
  int bins = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    const double e = probs[i] * static_cast<double>(n);
    if (e == 0) continue;
    if (e < 5) {
      pooled_expected += e;
      pooled_observed += static_cast<double>(counts[i]);
      continue;
    }
    const double d = static_cast<double>(counts[i]) - e;
    out.stat += d * d / e;
    ++bins;
  }
  if (pooled_expected > 0) {
    const double d = pooled_observed - pooled_expected;
    out.stat += d * d / pooled_expected;
    ++bins;
  }
  out.df = std::max(bins - 1, 1);
  return out;
}

// ---------------------------------------------------------------------------
// Philox.

// Random123's published known-answer vectors for Philox4x32-10 (counter,
// key, output), also used by TensorFlow's and others' test suites.
struct PhiloxKat {
  uint32_t ctr[4];
  uint32_t key[2];
  uint32_t out[4];
};
constexpr PhiloxKat kPhiloxKats[] = {
    {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
    {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
     {0xffffffff, 0xffffffff},
     {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
    {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
     {0xa4093822, 0x299f31d0},
     {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
};

TEST(PhiloxTest, KnownAnswerVectors) {
  for (const PhiloxKat& kat : kPhiloxKats) {
    Philox4x32Block ctr;
    std::copy(kat.ctr, kat.ctr + 4, ctr.v);
    const Philox4x32Block out = Philox4x32_10(ctr, kat.key[0], kat.key[1]);
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(out.v[i], kat.out[i]) << "word " << i << " ctr0 " << kat.ctr[0];
    }
  }
}

// The documented (seed, stream, step, lane) -> (key, counter, word) mapping,
// checked against the same published outputs.
TEST(PhiloxTest, BitsFollowTheDocumentedCounterMapping) {
  for (const PhiloxKat& kat : kPhiloxKats) {
    const uint64_t seed = (uint64_t{kat.key[1]} << 32) | kat.key[0];
    const uint64_t step = (uint64_t{kat.ctr[1]} << 32) | kat.ctr[0];
    const uint64_t stream = (uint64_t{kat.ctr[3]} << 32) | kat.ctr[2];
    for (uint32_t lane = 0; lane < 4; ++lane) {
      EXPECT_EQ(PhiloxBits(seed, stream, step, lane), kat.out[lane]);
      EXPECT_EQ(UniformFloat(seed, stream, step, lane),
                static_cast<float>(kat.out[lane] >> 8) / 16777216.0f);
    }
    // Lanes 4..7 use the next block along counter word 3.
    const uint64_t stream_hi_flipped = stream ^ (uint64_t{1} << 32);
    for (uint32_t lane = 0; lane < 4; ++lane) {
      EXPECT_EQ(PhiloxBits(seed, stream, step, lane + 4),
                PhiloxBits(seed, stream_hi_flipped, step, lane));
    }
  }
}

TEST(PhiloxTest, UniformFloatIsInRangeAndOnTheTwoToMinus24Grid) {
  float lo = 1, hi = 0;
  for (uint64_t step = 0; step < 100000; ++step) {
    const float u = UniformFloat(7, 3, step, 0);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    const double scaled = static_cast<double>(u) * 16777216.0;
    ASSERT_EQ(scaled, std::floor(scaled)) << u;
    lo = std::min(lo, u);
    hi = std::max(hi, u);
  }
  EXPECT_LT(lo, 1e-3f);
  EXPECT_GT(hi, 1 - 1e-3f);
}

// Chi-square over 256 equal bins, 100k draws, for each axis the sampler
// varies: step, stream, lane and seed.
TEST(PhiloxTest, UniformFloatIsUniformAlongEveryAxis) {
  constexpr int kBins = 256;
  constexpr int64_t kDraws = 100000;
  struct Axis {
    const char* name;
    float (*draw)(uint64_t i);
  };
  const Axis axes[] = {
      {"step", [](uint64_t i) { return UniformFloat(42, 0, i, 0); }},
      {"stream", [](uint64_t i) { return UniformFloat(42, i, 5, 0); }},
      {"lane",
       [](uint64_t i) {
         return UniformFloat(42, 1, i / 64, static_cast<uint32_t>(i % 64));
       }},
      {"seed", [](uint64_t i) { return UniformFloat(i, 0, 0, 0); }},
  };
  const std::vector<double> probs(kBins, 1.0 / kBins);
  for (const Axis& axis : axes) {
    std::vector<int64_t> counts(kBins, 0);
    for (int64_t i = 0; i < kDraws; ++i) {
      ++counts[static_cast<int>(axis.draw(static_cast<uint64_t>(i)) * kBins)];
    }
    const ChiSquare c = PearsonChiSquare(counts, probs, kDraws);
    EXPECT_EQ(c.df, kBins - 1);
    EXPECT_LT(c.stat, ChiSquareBound(c.df)) << axis.name;
  }
}

// Pairs of consecutive steps fall uniformly on a 16x16 grid.
TEST(PhiloxTest, ConsecutiveStepsAreNotCorrelated) {
  constexpr int kSide = 16;
  constexpr int64_t kPairs = 100000;
  std::vector<int64_t> counts(kSide * kSide, 0);
  for (int64_t i = 0; i < kPairs; ++i) {
    const int a = static_cast<int>(UniformFloat(9, 0, 2 * i, 0) * kSide);
    const int b = static_cast<int>(UniformFloat(9, 0, 2 * i + 1, 0) * kSide);
    ++counts[a * kSide + b];
  }
  const ChiSquare c = PearsonChiSquare(
      counts, std::vector<double>(kSide * kSide, 1.0 / (kSide * kSide)),
      kPairs);
  EXPECT_LT(c.stat, ChiSquareBound(c.df));
}

// ---------------------------------------------------------------------------
// Reference sampler, written from the specification in sampler.h with full
// sorts and double precision.

std::vector<double> ReferencePenalised(const std::vector<float>& logits,
                                       const SamplingParams& p,
                                       const std::vector<int32_t>& history) {
  std::vector<double> l(logits.begin(), logits.end());
  size_t begin = 0;
  if (p.penalty_last_n == 0) begin = history.size();
  if (p.penalty_last_n > 0 &&
      history.size() > static_cast<size_t>(p.penalty_last_n)) {
    begin = history.size() - static_cast<size_t>(p.penalty_last_n);
  }
  std::map<int32_t, int> counts;
  for (size_t i = begin; i < history.size(); ++i) {
    if (history[i] >= 0 && history[i] < static_cast<int32_t>(l.size())) {
      ++counts[history[i]];
    }
  }
  for (const auto& [token, count] : counts) {
    double x = l[token];
    x = x > 0 ? x / p.repetition_penalty : x * p.repetition_penalty;
    l[token] = x - p.presence_penalty - count * p.frequency_penalty;
  }
  return l;
}

// The truncated, renormalised distribution of a non-greedy Sample(), plus the
// kept tokens in sorted order and their unnormalised weights.
struct ReferenceDist {
  std::vector<double> probs;        // (n_vocab), zero outside the kept set
  std::vector<int32_t> kept;        // sorted order
  std::vector<double> kept_weight;  // parallel to `kept`
};

ReferenceDist ReferenceDistribution(const std::vector<float>& logits,
                                    const SamplingParams& p,
                                    const std::vector<int32_t>& history) {
  const std::vector<double> l = ReferencePenalised(logits, p, history);
  const int32_t n = static_cast<int32_t>(l.size());
  std::vector<int32_t> ids(n);
  std::iota(ids.begin(), ids.end(), 0);
  std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
    return l[a] != l[b] ? l[a] > l[b] : a < b;
  });
  size_t keep = ids.size();
  if (p.top_k > 0) keep = std::min(keep, static_cast<size_t>(p.top_k));
  std::vector<double> prob(keep);
  double z = 0;
  for (size_t i = 0; i < keep; ++i) {
    prob[i] = std::exp((l[ids[i]] - l[ids[0]]) / p.temperature);
    z += prob[i];
  }
  for (double& q : prob) q /= z;
  if (p.top_p < 1) {
    double cum = 0;
    for (size_t i = 0; i < keep; ++i) {
      cum += prob[i];
      if (cum >= p.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  size_t kept_min_p = 0;
  while (kept_min_p < keep && prob[kept_min_p] >= p.min_p * prob[0]) {
    ++kept_min_p;
  }
  keep = kept_min_p;
  ReferenceDist out;
  out.probs.assign(n, 0.0);
  double kept_z = 0;
  for (size_t i = 0; i < keep; ++i) kept_z += prob[i];
  for (size_t i = 0; i < keep; ++i) {
    out.probs[ids[i]] = prob[i] / kept_z;
    out.kept.push_back(ids[i]);
    out.kept_weight.push_back(prob[i]);
  }
  return out;
}

std::vector<float> RandomLogits(int n, float stddev, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> logits(n);
  for (float& x : logits) x = normal(rng);
  return logits;
}

std::vector<int64_t> CountDraws(const std::vector<float>& logits,
                                const SamplingParams& p,
                                const std::vector<int32_t>& history,
                                int64_t n_draws) {
  SamplerScratch scratch;
  std::vector<int64_t> counts(logits.size(), 0);
  for (int64_t step = 0; step < n_draws; ++step) {
    const SampleResult r =
        Sample(logits, p, history, 0, static_cast<uint64_t>(step), &scratch);
    ++counts.at(r.token);
  }
  return counts;
}

// Tokens outside the kept set never appear; the rest match the reference by
// chi-square (p ~ 1e-6) and each frequency is within 6 standard errors.
void ExpectMatchesReference(const std::vector<int64_t>& counts,
                            const std::vector<double>& probs, int64_t n) {
  for (size_t i = 0; i < counts.size(); ++i) {
    if (probs[i] == 0) {
      EXPECT_EQ(counts[i], 0) << "truncated token " << i;
    }
    const double f = static_cast<double>(counts[i]) / n;
    const double se = std::sqrt(probs[i] * (1 - probs[i]) / n);
    EXPECT_LE(std::abs(f - probs[i]), 6 * se + 1.0 / n) << "token " << i;
  }
  const ChiSquare c = PearsonChiSquare(counts, probs, n);
  EXPECT_LT(c.stat, ChiSquareBound(c.df)) << "df " << c.df;
}

// ---------------------------------------------------------------------------
// Sampler.

TEST(SamplerTest, GreedyPicksArgmaxWithTiesToLowestId) {
  SamplingParams p;
  p.temperature = 0;
  for (uint32_t seed = 0; seed < 20; ++seed) {
    const std::vector<float> logits = RandomLogits(1000, 3.0f, seed);
    const auto argmax = std::max_element(logits.begin(), logits.end());
    const int32_t want = static_cast<int32_t>(argmax - logits.begin());
    EXPECT_EQ(Sample(logits, p, {}, 0, seed, nullptr).token, want);
  }
  const std::vector<float> tied = {1, 5, 2, 5, 5, -kInf};
  EXPECT_EQ(Sample(tied, p, {}, 0, 0, nullptr).token, 1);
}

struct StatCase {
  const char* name;
  SamplingParams params;
  std::vector<int32_t> history;
};

std::vector<StatCase> StatCases() {
  std::vector<StatCase> cases;
  auto add = [&](const char* name, auto edit,
                 std::vector<int32_t> history = {}) {
    SamplingParams p;
    p.seed = 1234;
    edit(p);
    cases.push_back({name, p, std::move(history)});
  };
  add("plain", [](SamplingParams&) {});
  add("temperature 0.6", [](SamplingParams& p) { p.temperature = 0.6f; });
  add("temperature 1.7", [](SamplingParams& p) { p.temperature = 1.7f; });
  add("top_k 5", [](SamplingParams& p) { p.top_k = 5; });
  add("top_p 0.75", [](SamplingParams& p) { p.top_p = 0.75f; });
  add("min_p 0.08", [](SamplingParams& p) { p.min_p = 0.08f; });
  add("combo", [](SamplingParams& p) {
    p.temperature = 1.3f;
    p.top_k = 12;
    p.top_p = 0.9f;
    p.min_p = 0.03f;
  });
  add("penalties",
      [](SamplingParams& p) {
        p.temperature = 0.9f;
        p.repetition_penalty = 1.4f;
        p.presence_penalty = 0.5f;
        p.frequency_penalty = 0.3f;
        p.penalty_last_n = 6;
        p.top_p = 0.95f;
      },
      {0, 1, 2, 3, 4, 5, 6, 7, 3, 3, 9, 1, 2, 2, 2});
  return cases;
}

// 200k draws over consecutive steps for each parameter set.
TEST(SamplerTest, EmpiricalFrequenciesMatchTheReferenceDistribution) {
  const std::vector<float> logits = RandomLogits(24, 1.5f, 77);
  constexpr int64_t kDraws = 200000;
  for (const StatCase& c : StatCases()) {
    SCOPED_TRACE(c.name);
    const ReferenceDist ref =
        ReferenceDistribution(logits, c.params, c.history);
    ExpectMatchesReference(CountDraws(logits, c.params, c.history, kDraws),
                           ref.probs, kDraws);
  }
}

// The chi-square check has power: the same draws fail against a distribution
// only slightly different from the one sampled.
TEST(SamplerTest, ChiSquareCheckRejectsAWrongDistribution) {
  const std::vector<float> logits = RandomLogits(24, 1.5f, 77);
  SamplingParams sampled, other;
  sampled.temperature = 1.0f;
  other.temperature = 1.1f;
  constexpr int64_t kDraws = 200000;
  const std::vector<int64_t> counts = CountDraws(logits, sampled, {}, kDraws);
  const ChiSquare c = PearsonChiSquare(
      counts, ReferenceDistribution(logits, other, {}).probs, kDraws);
  EXPECT_GT(c.stat, ChiSquareBound(c.df));
}

// On a large vocabulary (where only part of the candidate list gets sorted)
// every draw lands in the reference inverse-CDF interval of its u.
TEST(SamplerTest, LargeVocabularyDrawsFollowTheReferenceInverseCdf) {
  const std::vector<float> logits = RandomLogits(65536, 2.5f, 5);
  std::vector<SamplingParams> cases(6);
  cases[1].top_p = 0.9f;
  cases[2].top_p = 0.5f;
  cases[2].temperature = 0.8f;
  cases[2].min_p = 0.01f;
  cases[3].top_k = 1000;
  cases[3].temperature = 1.2f;
  cases[4].top_k = 50000;
  cases[4].top_p = 0.97f;
  cases[5].temperature = 3.0f;
  cases[5].min_p = 0.2f;
  SamplerScratch scratch;
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    SamplingParams p = cases[ci];
    p.seed = 99 + ci;
    const ReferenceDist ref = ReferenceDistribution(logits, p, {});
    std::vector<double> cum(ref.kept.size());
    std::partial_sum(ref.kept_weight.begin(), ref.kept_weight.end(),
                     cum.begin());
    std::map<int32_t, size_t> position;
    for (size_t i = 0; i < ref.kept.size(); ++i) position[ref.kept[i]] = i;
    const uint64_t stream = ci;  // stream 0 and others alike
    for (uint64_t step = 0; step < 200; ++step) {
      const int32_t token = Sample(logits, p, {}, stream, step, &scratch).token;
      const auto it = position.find(token);
      ASSERT_NE(it, position.end())
          << "case " << ci << ": token " << token << " is outside the kept set";
      const double target = UniformFloat(p.seed, stream, step, 0) * cum.back();
      const double lo = it->second == 0 ? 0.0 : cum[it->second - 1];
      const double slack = 1e-5 * cum.back();
      EXPECT_LE(lo, target + slack) << "case " << ci << " step " << step;
      EXPECT_GT(cum[it->second], target - slack)
          << "case " << ci << " step " << step;
    }
  }
}

// Equal logits: the sorted order is by id, so with u from the documented
// draw the token is exactly floor(u * n_kept) (all products are exact).
TEST(SamplerTest, TiedCandidatesAreOrderedByIdInTheInverseCdf) {
  const std::vector<float> logits(4, 0.5f);
  SamplingParams p;
  p.seed = 3;
  for (const int32_t top_k : {0, 3, 1}) {
    p.top_k = top_k;
    const int n_kept = top_k == 0 ? 4 : top_k;
    for (const uint64_t stream : {0, 5}) {
      for (uint64_t step = 0; step < 2000; ++step) {
        const double u = UniformFloat(p.seed, stream, step, 0);
        EXPECT_EQ(Sample(logits, p, {}, stream, step, nullptr).token,
                  static_cast<int32_t>(std::floor(u * n_kept)))
            << "top_k " << top_k << " stream " << stream << " step " << step;
      }
    }
  }
}

// When u * W' lands exactly on a cumulative boundary the draw takes the
// next token ("exceeds", not "reaches"). Equal weights over 4096 tokens make
// the boundaries the integers; steps with an integral u * 4096 are found by
// searching the Philox stream.
TEST(SamplerTest, DrawOnABoundaryTakesTheNextToken) {
  const std::vector<float> logits(4096, -1.0f);
  SamplingParams p;
  p.seed = 8;
  SamplerScratch scratch;
  int found = 0;
  for (uint64_t step = 0; step < 200000 && found < 5; ++step) {
    const double scaled = UniformFloat(p.seed, 0, step, 0) * 4096.0;
    if (scaled != std::floor(scaled) || scaled == 0) continue;
    ++found;
    EXPECT_EQ(Sample(logits, p, {}, 0, step, &scratch).token,
              static_cast<int32_t>(scaled))
        << "step " << step;
  }
  EXPECT_EQ(found, 5);
}

TEST(SamplerTest, TruncationToOneTokenIsGreedy) {
  const std::vector<float> logits = RandomLogits(5000, 2.0f, 3);
  SamplingParams greedy;
  greedy.temperature = 0;
  const int32_t want = Sample(logits, greedy, {}, 0, 0, nullptr).token;
  SamplingParams k1, p_tiny, minp1;
  k1.top_k = 1;
  p_tiny.top_p = 1e-6f;
  minp1.min_p = 1.0f;
  for (uint64_t step = 0; step < 50; ++step) {
    EXPECT_EQ(Sample(logits, k1, {}, 0, step, nullptr).token, want);
    EXPECT_EQ(Sample(logits, p_tiny, {}, 0, step, nullptr).token, want);
    EXPECT_EQ(Sample(logits, minp1, {}, 0, step, nullptr).token, want);
  }
}

TEST(SamplerTest, MaskedAndNanLogitsAreNeverChosen) {
  std::vector<float> logits(64, 0.0f);
  for (size_t i = 0; i < logits.size(); i += 2) logits[i] = -kInf;
  logits[1] = std::numeric_limits<float>::quiet_NaN();
  SamplingParams p;
  p.temperature = 5.0f;
  SamplerScratch scratch;
  for (uint64_t step = 0; step < 5000; ++step) {
    const int32_t t = Sample(logits, p, {}, 0, step, &scratch).token;
    ASSERT_EQ(t % 2, 1) << t;
    ASSERT_NE(t, 1);
  }
  // Every logit masked still yields a valid id.
  const std::vector<float> all_masked(10, -kInf);
  const int32_t t = Sample(all_masked, p, {}, 0, 0, &scratch).token;
  EXPECT_GE(t, 0);
  EXPECT_LT(t, 10);
}

TEST(SamplerTest, ApplyPenaltiesMatchesTheFormula) {
  const std::vector<float> logits = {2.0f, -1.0f, 0.5f,  3.0f, -2.0f,
                                     0.0f, 1.5f,  -0.5f, 4.0f, 1.0f};
  const std::vector<int32_t> history = {8, 0, 1, 1, 3, 3, 3, 7, 99, -5, 5};
  SamplingParams p;
  p.repetition_penalty = 1.3f;
  p.presence_penalty = 0.4f;
  p.frequency_penalty = 0.25f;
  SamplerScratch scratch;
  for (const int32_t last_n : {-1, 0, 3, 5, 64}) {
    p.penalty_last_n = last_n;
    std::vector<float> got = logits;
    ApplyPenalties(got, p, history, &scratch);
    const std::vector<double> want = ReferencePenalised(logits, p, history);
    for (size_t i = 0; i < logits.size(); ++i) {
      EXPECT_NEAR(got[i], want[i], 1e-6) << "last_n " << last_n << " id " << i;
    }
  }
  // Spot values worked by hand for the whole history: token 3 (logit 3,
  // seen 3 times) -> 3/1.3 - 0.4 - 0.75; token 1 (logit -1, twice) ->
  // -1.3 - 0.4 - 0.5; token 2 unseen stays 0.5.
  p.penalty_last_n = -1;
  std::vector<float> got = logits;
  ApplyPenalties(got, p, history, &scratch);
  EXPECT_NEAR(got[3], 3.0 / 1.3 - 1.15, 1e-6);
  EXPECT_NEAR(got[1], -2.2, 1e-6);
  EXPECT_EQ(got[2], 0.5f);
  EXPECT_NEAR(got[5], -0.65, 1e-6);  // zero logit: only the additive part
}

TEST(SamplerTest, PenaltiesChangeTheGreedyChoice) {
  const std::vector<float> logits = {5.0f, 4.9f, 1.0f};
  SamplingParams p;
  p.temperature = 0;
  EXPECT_EQ(Sample(logits, p, std::vector<int32_t>{0}, 0, 0, nullptr).token, 0);
  p.repetition_penalty = 1.1f;  // 5 / 1.1 = 4.55 < 4.9
  EXPECT_EQ(Sample(logits, p, std::vector<int32_t>{0}, 0, 0, nullptr).token, 1);
  EXPECT_EQ(Sample(logits, p, std::vector<int32_t>{2}, 0, 0, nullptr).token, 0);
  p.penalty_last_n = 1;  // token 0 falls out of the window
  EXPECT_EQ(Sample(logits, p, std::vector<int32_t>{0, 2}, 0, 0, nullptr).token,
            0);
  p.repetition_penalty = 1.0f;
  p.penalty_last_n = -1;
  p.frequency_penalty = 0.04f;  // 5 - 3 * 0.04 = 4.88 < 4.9; 2 uses: 4.92
  EXPECT_EQ(
      Sample(logits, p, std::vector<int32_t>{0, 0, 0}, 0, 0, nullptr).token, 1);
  EXPECT_EQ(Sample(logits, p, std::vector<int32_t>{0, 0}, 0, 0, nullptr).token,
            0);
  p.frequency_penalty = 0;
  p.presence_penalty = 0.2f;  // once, however many uses
  EXPECT_EQ(
      Sample(logits, p, std::vector<int32_t>{0, 0, 0}, 0, 0, nullptr).token, 1);
  p.penalty_last_n = 0;
  EXPECT_EQ(
      Sample(logits, p, std::vector<int32_t>{0, 0, 0}, 0, 0, nullptr).token, 0);
}

TEST(SamplerTest, SameInputsGiveTheSameTokenWhateverTheScratch) {
  const std::vector<float> logits = RandomLogits(3000, 1.0f, 11);
  const std::vector<float> other = RandomLogits(70000, 1.0f, 12);
  const std::vector<int32_t> history = {1, 2, 3, 2999, 5};
  SamplingParams p;
  p.seed = 555;
  p.top_p = 0.95f;
  p.repetition_penalty = 1.2f;
  SamplerScratch shared;
  for (uint64_t step = 0; step < 100; ++step) {
    const int32_t a = Sample(logits, p, history, 2, step, nullptr).token;
    // Interleave an unrelated, larger call through the shared scratch.
    Sample(other, p, history, 0, step, &shared);
    EXPECT_EQ(Sample(logits, p, history, 2, step, &shared).token, a);
    SamplerScratch fresh;
    EXPECT_EQ(Sample(logits, p, history, 2, step, &fresh).token, a);
  }
  // Steps are independent of call order.
  std::vector<int32_t> forward, backward(100);
  for (uint64_t step = 0; step < 100; ++step) {
    forward.push_back(Sample(logits, p, history, 0, step, &shared).token);
  }
  for (uint64_t step = 100; step-- > 0;) {
    backward[step] = Sample(logits, p, history, 0, step, &shared).token;
  }
  EXPECT_EQ(forward, backward);
}

// Over 16 equally likely tokens two independent sequences agree on ~1/16 of
// steps; the bound 0.15 is ~11 standard errors above that at n = 4000.
TEST(SamplerTest, DifferentSeedsOrStreamsGiveIndependentSequences) {
  const std::vector<float> logits(16, 0.0f);
  auto agreement = [&](uint64_t seed_a, uint64_t stream_a, uint64_t seed_b,
                       uint64_t stream_b) {
    SamplingParams a, b;
    a.seed = seed_a;
    b.seed = seed_b;
    int same = 0;
    constexpr int kSteps = 4000;
    for (int step = 0; step < kSteps; ++step) {
      same += Sample(logits, a, {}, stream_a, step, nullptr).token ==
              Sample(logits, b, {}, stream_b, step, nullptr).token;
    }
    return static_cast<double>(same) / kSteps;
  };
  EXPECT_EQ(agreement(1, 0, 1, 0), 1.0);
  EXPECT_LT(agreement(1, 0, 2, 0), 0.15);
  EXPECT_LT(agreement(1, 0, 1, 1), 0.15);
  EXPECT_LT(agreement(0, 0, uint64_t{1} << 32, 0), 0.15);
}

// Logprobs are log-softmax of the raw logits, whatever the sampling
// transforms; the top list is sorted, ties to the lower id.
TEST(SamplerTest, LogprobsAreRawLogSoftmax) {
  std::vector<float> logits = RandomLogits(1000, 2.0f, 21);
  const auto max_it = std::max_element(logits.begin(), logits.end());
  logits[500] = logits[17] = *max_it + 0.25f;  // a tie at the top
  logits[3] = -kInf;
  double m = -kInf;
  for (const float x : logits) m = std::max<double>(m, x);
  double z = 0;
  for (const float x : logits) z += std::exp(x - m);
  std::vector<double> want(logits.size());
  for (size_t i = 0; i < logits.size(); ++i)
    want[i] = logits[i] - m - std::log(z);
  std::vector<int32_t> by_logit(logits.size());
  std::iota(by_logit.begin(), by_logit.end(), 0);
  std::stable_sort(by_logit.begin(), by_logit.end(),
                   [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });

  SamplingParams p;
  p.temperature = 0.5f;
  p.top_k = 40;
  p.repetition_penalty = 1.5f;
  p.presence_penalty = 1.0f;
  const std::vector<int32_t> history = {17, 500, 42};
  SamplerScratch scratch;
  for (const int32_t n_top : {0, 1, 7, kMaxLogprobs}) {
    p.n_logprobs = n_top;
    for (uint64_t step = 0; step < 20; ++step) {
      const SampleResult r = Sample(logits, p, history, 0, step, &scratch);
      EXPECT_NEAR(r.logprob, want[r.token], 1e-5);
      ASSERT_EQ(r.top.size(), static_cast<size_t>(n_top));
      for (int i = 0; i < n_top; ++i) {
        EXPECT_EQ(r.top[i].token, by_logit[i]) << i;
        EXPECT_NEAR(r.top[i].logprob, want[by_logit[i]], 1e-5) << i;
      }
    }
  }
  EXPECT_EQ(by_logit[0], 17);
  p.temperature = 0;
  p.n_logprobs = 2;
  const SampleResult r = Sample(logits, p, {}, 0, 0, &scratch);
  EXPECT_EQ(r.token, 17);
  EXPECT_NEAR(r.logprob, want[17], 1e-5);
  // A vocabulary smaller than n_logprobs reports every token.
  p.n_logprobs = kMaxLogprobs;
  const std::vector<float> tiny = {0.0f, 1.0f, -1.0f};
  EXPECT_EQ(Sample(tiny, p, {}, 0, 0, &scratch).top.size(), 3u);
  EXPECT_EQ(Sample(logits, p, {}, 0, 0, &scratch).top[3].token, by_logit[3]);
  EXPECT_EQ(want[3], -kInf);
}

TEST(SamplingParamsTest, DefaultsAreValid) {
  EXPECT_TRUE(SamplingParams{}.Validate(32000).ok());
}

TEST(SamplingParamsTest, RejectsEachOutOfRangeFieldByName) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  struct Bad {
    const char* field;
    void (*edit)(SamplingParams&);
  };
  const Bad bads[] = {
      {"temperature", [](SamplingParams& p) { p.temperature = -0.1f; }},
      {"temperature", [](SamplingParams& p) { p.temperature = kInf; }},
      {"top_k", [](SamplingParams& p) { p.top_k = -1; }},
      {"top_p", [](SamplingParams& p) { p.top_p = 0.0f; }},
      {"top_p", [](SamplingParams& p) { p.top_p = 1.01f; }},
      {"min_p", [](SamplingParams& p) { p.min_p = -0.01f; }},
      {"min_p", [](SamplingParams& p) { p.min_p = 1.5f; }},
      {"repetition_penalty",
       [](SamplingParams& p) { p.repetition_penalty = 0.0f; }},
      {"repetition_penalty",
       [](SamplingParams& p) { p.repetition_penalty = 101.0f; }},
      {"presence_penalty",
       [](SamplingParams& p) { p.presence_penalty = 2.5f; }},
      {"frequency_penalty",
       [](SamplingParams& p) { p.frequency_penalty = -2.5f; }},
      {"penalty_last_n", [](SamplingParams& p) { p.penalty_last_n = -2; }},
      {"n_logprobs", [](SamplingParams& p) { p.n_logprobs = -1; }},
      {"n_logprobs", [](SamplingParams& p) { p.n_logprobs = 21; }},
  };
  for (const Bad& bad : bads) {
    SamplingParams p;
    bad.edit(p);
    const absl::Status s = p.Validate(32000);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad.field;
    EXPECT_THAT(std::string(s.message()), HasSubstr(bad.field));
  }
  SamplingParams p;
  p.temperature = nan;
  p.top_p = nan;
  const absl::Status s = p.Validate(32000);
  EXPECT_THAT(std::string(s.message()), HasSubstr("temperature"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("top_p"));
  EXPECT_THAT(std::string(SamplingParams{}.Validate(0).message()),
              HasSubstr("n_vocab"));
  // Boundary values that are allowed.
  p = SamplingParams{};
  p.temperature = 0;
  p.top_p = 1;
  p.min_p = 1;
  p.top_k = 1000000;
  p.penalty_last_n = -1;
  p.presence_penalty = -2;
  p.frequency_penalty = 2;
  p.n_logprobs = kMaxLogprobs;
  EXPECT_TRUE(p.Validate(10).ok()) << p.Validate(10);
}

}  // namespace
}  // namespace m40llm
