// Token sampler: the host reference of the semantics documented in
// engine/sampler.h. It stays O(n_vocab) plus a few small sorts whatever the
// truncation settings, by ordering candidates in weight buckets and sorting
// only the buckets that a truncation or draw boundary falls in.
#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/philox.h"

namespace m40llm {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Candidates are bucketed by their distance below the top logit:
//   bucket(i) = floor((l_max - l[i]) * kBucketsPerOctave / (T * ln 2)),
// so one bucket spans a factor of about 2^(1/kBucketsPerOctave) in weight;
// kOverflowBucket takes everything below ~2^-kOctaves, masked tokens
// included. Buckets follow the sorted order (the key is monotone in the
// logit), so a cumulative-weight walk can skip a whole bucket by its total.
constexpr int kBucketsPerOctave = 16;
constexpr int kOctaves = 48;
constexpr uint32_t kOverflowBucket = kBucketsPerOctave * kOctaves;
constexpr uint32_t kNumBuckets = kOverflowBucket + 1;

// NaN logits are treated as -inf everywhere (never chosen, logprob -inf).
inline float Clean(float x) { return std::isnan(x) ? kNegInf : x; }

// The sorted order: higher logit first, ties to the lower id. The logits it
// reads must be NaN-free, which makes this a strict weak order.
struct HigherLogitFirst {
  const float* logits;
  bool operator()(int32_t a, int32_t b) const {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  }
};

// The first `k_len` tokens of the sorted order of penalised logits `l`, laid
// out bucket by bucket in scratch->order, with their weights in
// scratch->weights and per-bucket totals. Buckets are sorted on first use.
class BucketedCandidates {
 public:
  // Where a cumulative-weight walk stopped: the prefix length, the weight
  // of that prefix and whether the requested level was reached.
  struct Crossing {
    size_t len;
    double cum;
    bool found;
  };

  BucketedCandidates(std::span<const float> l, float temperature,
                     SamplerScratch* scratch)
      : l_(l),
        t_(temperature),
        less_{l.data()},
        order_(scratch->order),
        w_(scratch->weights),
        start_(scratch->bucket_start),
        end_(scratch->bucket_end),
        mass_(scratch->bucket_mass),
        sorted_(scratch->bucket_sorted) {}

  // Lays out the first `k_len` (1..n) candidates and weighs them.
  void Build(size_t k_len, float min_p) {
    const size_t n = l_.size();
    l_max_ = *std::max_element(l_.begin(), l_.end());
    scale_ = static_cast<float>(kBucketsPerOctave / std::numbers::ln2) / t_;

    // Counting sort by bucket, stopping at the bucket holding position
    // k_len - 1; later buckets are never looked at.
    start_.assign(kNumBuckets + 1, 0);
    for (size_t i = 0; i < n; ++i) ++start_[Bucket(i) + 1];
    for (uint32_t b = 0; b < kNumBuckets; ++b) start_[b + 1] += start_[b];
    last_ = 0;
    while (start_[last_ + 1] < k_len) ++last_;
    end_.assign(start_.begin(), start_.end() - 1);  // fill cursors for now
    order_.resize(start_[last_ + 1]);
    for (size_t i = 0; i < n; ++i) {
      const uint32_t b = Bucket(i);
      if (b <= last_) order_[end_[b]++] = static_cast<int32_t>(i);
    }
    sorted_.assign(kNumBuckets, 0);
    if (k_len < order_.size()) {
      // top-k cuts the last bucket: keep its k_len - start best, sorted.
      const auto first = order_.begin() + start_[last_];
      const auto cut = order_.begin() + static_cast<ptrdiff_t>(k_len);
      std::nth_element(first, cut, order_.end(), less_);
      std::sort(first, cut, less_);
      order_.resize(k_len);
      end_[last_] = k_len;
      sorted_[last_] = 1;
    }

    w_.resize(n);
    mass_.assign(kNumBuckets, 0.0);
    total_ = 0;
    min_p_len_ = 0;
    for (uint32_t b = 0; b <= last_; ++b) {
      for (size_t j = start_[b]; j < end_[b]; ++j) {
        const int32_t id = order_[j];
        const float w =
            l_[id] == l_max_ ? 1.0f : std::exp((l_[id] - l_max_) / t_);
        w_[id] = w;
        mass_[b] += w;
        min_p_len_ += w >= min_p;
      }
      total_ += mass_[b];
    }
  }

  // Total weight of the candidates (W).
  double total_weight() const { return total_; }
  // Length of the prefix whose weights are >= min_p (w is monotone).
  size_t min_p_len() const { return min_p_len_; }

  // Walks the first `limit` positions and stops at the first prefix whose
  // cumulative weight is > x (strict) or >= x (not strict).
  Crossing Walk(double x, bool strict, size_t limit) {
    auto reached = [&](double cum) { return strict ? x < cum : cum >= x; };
    double cum = 0;
    for (uint32_t b = 0; b <= last_ && start_[b] < limit; ++b) {
      if (start_[b] == end_[b]) continue;
      if (end_[b] <= limit && !reached(cum + mass_[b])) {
        cum += mass_[b];
        continue;
      }
      SortBucket(b);
      const size_t stop = std::min<size_t>(end_[b], limit);
      for (size_t j = start_[b]; j < stop; ++j) {
        cum += w_[order_[j]];
        if (reached(cum)) return {j + 1, cum, true};
      }
    }
    return {limit, cum, false};
  }

  // The token at sorted position `pos`, which a Walk() must have visited
  // (or 0, which is always in the first bucket).
  int32_t TokenAt(size_t pos) {
    if (pos == 0) SortBucket(0);
    return order_[pos];
  }

 private:
  uint32_t Bucket(size_t i) const {
    if (l_[i] == l_max_) return 0;
    const float s = (l_max_ - l_[i]) * scale_;
    return s < static_cast<float>(kOverflowBucket) ? static_cast<uint32_t>(s)
                                                   : kOverflowBucket;
  }

  void SortBucket(uint32_t b) {
    if (sorted_[b]) return;
    std::sort(order_.begin() + start_[b], order_.begin() + end_[b], less_);
    sorted_[b] = 1;
  }

  std::span<const float> l_;
  const float t_;
  const HigherLogitFirst less_;
  std::vector<int32_t>& order_;   // (<= n) token ids, bucket-major
  std::vector<float>& w_;         // (n) weights by token id
  std::vector<uint32_t>& start_;  // (kNumBuckets + 1) first position
  std::vector<uint32_t>& end_;    // (kNumBuckets) one past the last
  std::vector<double>& mass_;     // (kNumBuckets) total weight
  std::vector<uint8_t>& sorted_;  // (kNumBuckets) bucket sorted yet
  float l_max_ = 0;
  float scale_ = 0;
  uint32_t last_ = 0;  // last bucket holding candidates
  double total_ = 0;
  size_t min_p_len_ = 0;
};

// Fills `top` with the `n_top` highest of the NaN-free logits `l` (ties to
// the lower id), temporarily storing the logit in `logprob`. One pass with
// an insertion into a list of at most kMaxLogprobs entries.
void SelectTop(std::span<const float> l, size_t n_top,
               std::vector<TokenLogprob>* top) {
  top->clear();
  if (n_top == 0) return;
  top->reserve(n_top);
  for (size_t i = 0; i < l.size(); ++i) {
    const float x = l[i];
    // Ids arrive in increasing order, so an equal logit never displaces an
    // entry already present: ties resolve to the lower id.
    if (top->size() == n_top && !(x > top->back().logprob)) continue;
    if (top->size() == n_top) top->pop_back();
    auto pos = top->begin();
    while (pos != top->end() && pos->logprob >= x) ++pos;
    top->insert(pos, TokenLogprob{static_cast<int32_t>(i), x});
  }
}

}  // namespace

absl::Status SamplingParams::Validate(int32_t n_vocab) const {
  std::vector<std::string> errors;
  if (n_vocab <= 0) {
    errors.push_back(
        absl::StrFormat("n_vocab must be positive, got %d", n_vocab));
  }
  if (!std::isfinite(temperature) || temperature < 0) {
    errors.push_back(absl::StrFormat(
        "temperature must be finite and >= 0 (0 = greedy), got %g",
        temperature));
  }
  if (top_k < 0) {
    errors.push_back(
        absl::StrFormat("top_k must be >= 0 (0 = disabled), got %d", top_k));
  }
  if (!(top_p > 0 && top_p <= 1)) {
    errors.push_back(absl::StrFormat(
        "top_p must be in (0, 1] (1 = disabled), got %g", top_p));
  }
  if (!(min_p >= 0 && min_p <= 1)) {
    errors.push_back(absl::StrFormat(
        "min_p must be in [0, 1] (0 = disabled), got %g", min_p));
  }
  if (!(repetition_penalty > 0 && repetition_penalty <= 100)) {
    errors.push_back(absl::StrFormat(
        "repetition_penalty must be in (0, 100] (1 = disabled), got %g",
        repetition_penalty));
  }
  if (!(presence_penalty >= -2 && presence_penalty <= 2)) {
    errors.push_back(absl::StrFormat(
        "presence_penalty must be in [-2, 2], got %g", presence_penalty));
  }
  if (!(frequency_penalty >= -2 && frequency_penalty <= 2)) {
    errors.push_back(absl::StrFormat(
        "frequency_penalty must be in [-2, 2], got %g", frequency_penalty));
  }
  if (penalty_last_n < -1) {
    errors.push_back(absl::StrFormat(
        "penalty_last_n must be >= -1 (-1 = whole history, 0 = none), got %d",
        penalty_last_n));
  }
  if (n_logprobs < 0 || n_logprobs > kMaxLogprobs) {
    errors.push_back(absl::StrFormat("n_logprobs must be in [0, %d], got %d",
                                     kMaxLogprobs, n_logprobs));
  }
  if (errors.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "invalid sampling parameters: ", absl::StrJoin(errors, "; ")));
}

void ApplyPenalties(std::span<float> logits, const SamplingParams& p,
                    std::span<const int32_t> history, SamplerScratch* scratch) {
  if (p.penalty_last_n == 0 || history.empty()) return;
  if (p.repetition_penalty == 1.0f && p.presence_penalty == 0.0f &&
      p.frequency_penalty == 0.0f) {
    return;
  }
  SamplerScratch local;
  if (scratch == nullptr) scratch = &local;
  const size_t window =
      p.penalty_last_n < 0
          ? history.size()
          : std::min(history.size(), static_cast<size_t>(p.penalty_last_n));
  const std::span<const int32_t> recent = history.last(window);
  const int64_t n_vocab = static_cast<int64_t>(logits.size());

  // counts stays all-zero between calls; only the touched ids are reset, so
  // a short window costs O(window), not O(n_vocab).
  std::vector<int32_t>& counts = scratch->counts;
  std::vector<int32_t>& touched = scratch->touched;
  if (counts.size() < logits.size()) counts.resize(logits.size(), 0);
  touched.clear();
  for (const int32_t t : recent) {
    if (t < 0 || t >= n_vocab) continue;
    if (counts[t]++ == 0) touched.push_back(t);
  }
  for (const int32_t t : touched) {
    float& x = logits[t];
    x = x > 0 ? x / p.repetition_penalty : x * p.repetition_penalty;
    x -= p.presence_penalty +
         static_cast<float>(counts[t]) * p.frequency_penalty;
    counts[t] = 0;
  }
}

SampleResult Sample(std::span<const float> logits, const SamplingParams& p,
                    std::span<const int32_t> history, uint64_t stream,
                    uint64_t step, SamplerScratch* scratch) {
  SamplerScratch local;
  if (scratch == nullptr) scratch = &local;
  const size_t n = logits.size();
  SampleResult result{0, kNegInf, {}};
  if (n == 0) return result;

  // NaN-free copy; it is penalised in place below (step 1).
  std::vector<float>& l = scratch->logits;
  l.resize(n);
  float raw_max = kNegInf;
  for (size_t i = 0; i < n; ++i) {
    l[i] = Clean(logits[i]);
    raw_max = std::max(raw_max, l[i]);
  }

  // Raw log-softmax: logprob(x) = (x - raw_max) - log(sum exp(x - raw_max)).
  double raw_sum = 0;
  for (const float x : l)
    raw_sum += x == raw_max ? 1.0f : std::exp(x - raw_max);
  const double log_z = std::log(raw_sum);
  auto raw_logprob = [&](float x) -> float {
    const float c = Clean(x);
    if (c == raw_max) return static_cast<float>(-log_z);
    return static_cast<float>(static_cast<double>(c) - raw_max - log_z);
  };
  SelectTop(l, std::min<size_t>(std::max(p.n_logprobs, 0), n), &result.top);
  for (TokenLogprob& t : result.top) t.logprob = raw_logprob(t.logprob);

  ApplyPenalties(l, p, history, scratch);

  // Step 2: greedy.
  if (p.temperature == 0.0f) {
    size_t best = 0;
    for (size_t i = 1; i < n; ++i) {
      if (l[i] > l[best]) best = i;
    }
    result.token = static_cast<int32_t>(best);
    result.logprob = raw_logprob(logits[best]);
    return result;
  }

  // Step 3: truncation, each a prefix of the sorted order. The top token
  // has weight 1 >= min_p, so at least one token always survives.
  const size_t k_len =
      p.top_k > 0 ? std::min(n, static_cast<size_t>(p.top_k)) : n;
  BucketedCandidates candidates(l, p.temperature, scratch);
  candidates.Build(k_len, p.min_p);
  const size_t limit = std::min(k_len, candidates.min_p_len());
  const double top_p_level =
      p.top_p < 1.0f ? static_cast<double>(p.top_p) * candidates.total_weight()
                     : std::numeric_limits<double>::infinity();
  const BucketedCandidates::Crossing kept =
      candidates.Walk(top_p_level, /*strict=*/false, limit);

  // Step 4: inverse CDF over the kept prefix.
  const double target =
      static_cast<double>(UniformFloat(p.seed, stream, step, 0)) * kept.cum;
  const BucketedCandidates::Crossing drawn =
      candidates.Walk(target, /*strict=*/true, kept.len);
  const int32_t chosen = candidates.TokenAt(drawn.found ? drawn.len - 1 : 0);
  result.token = chosen;
  result.logprob = raw_logprob(logits[chosen]);
  return result;
}

}  // namespace m40llm
