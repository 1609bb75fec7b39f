// Token sampler: the host reference of the semantics documented in
// engine/sampler.h, built to stay O(n_vocab) in the common cases by sorting
// only as much of the candidate list as truncation and the draw inspect.
#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/philox.h"

namespace m40llm {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The first chunk the candidate list sorts; later chunks double. Large enough
// to cover the mass of a typical LLM distribution in one go.
constexpr size_t kFirstSortedChunk = 256;

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

// Sorts a candidate list lazily from the front: after Extend(n) the first n
// entries are in sorted order and no later entry precedes any of them. Each
// extension costs one selection over the unsorted tail plus a sort of the
// new chunk, so a walk that stops early never pays for a full sort.
class LazySortedOrder {
 public:
  LazySortedOrder(std::vector<int32_t>* order, HigherLogitFirst less)
      : order_(*order), less_(less) {}

  // Ensures entry `i` is in its final sorted position.
  void Need(size_t i) {
    if (i < sorted_) return;
    const size_t want = std::max({i + 1, 2 * sorted_, kFirstSortedChunk});
    const size_t n = std::min(want, order_.size());
    const auto first = order_.begin() + static_cast<ptrdiff_t>(sorted_);
    const auto mid = order_.begin() + static_cast<ptrdiff_t>(n);
    if (mid != order_.end()) std::nth_element(first, mid, order_.end(), less_);
    std::sort(first, mid, less_);
    sorted_ = n;
  }

 private:
  std::vector<int32_t>& order_;
  HigherLogitFirst less_;
  size_t sorted_ = 0;
};

// Fills result->top with the `n_top` highest raw logits (ties to the lower
// id), temporarily storing the cleaned logit in `logprob`. One pass with an
// insertion into a list of at most kMaxLogprobs entries.
void SelectTopRaw(std::span<const float> logits, size_t n_top,
                  std::vector<TokenLogprob>* top) {
  top->clear();
  if (n_top == 0) return;
  top->reserve(n_top);
  for (size_t i = 0; i < logits.size(); ++i) {
    const float x = Clean(logits[i]);
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
    errors.push_back(absl::StrFormat("n_vocab must be positive, got %d", n_vocab));
  }
  if (!std::isfinite(temperature) || temperature < 0) {
    errors.push_back(absl::StrFormat(
        "temperature must be finite and >= 0 (0 = greedy), got %g", temperature));
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
  return absl::InvalidArgumentError(
      absl::StrCat("invalid sampling parameters: ", absl::StrJoin(errors, "; ")));
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
    x -= p.presence_penalty + static_cast<float>(counts[t]) * p.frequency_penalty;
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

  // Raw log-softmax normaliser: log_z = log(sum exp(x - raw_max)).
  float raw_max = kNegInf;
  for (const float x : logits) raw_max = std::max(raw_max, Clean(x));
  double raw_sum = 0;
  for (const float x : logits) {
    const float c = Clean(x);
    raw_sum += c == raw_max ? 1.0 : std::exp(static_cast<double>(c) - raw_max);
  }
  const double log_z = std::log(raw_sum);
  auto raw_logprob = [&](float x) -> float {
    const float c = Clean(x);
    if (c == raw_max) return static_cast<float>(-log_z);
    return static_cast<float>(static_cast<double>(c) - raw_max - log_z);
  };

  SelectTopRaw(logits, std::min<size_t>(std::max(p.n_logprobs, 0), n),
               &result.top);
  for (TokenLogprob& t : result.top) t.logprob = raw_logprob(t.logprob);

  // Step 1: penalised copy.
  std::vector<float>& l = scratch->logits;
  l.resize(n);
  for (size_t i = 0; i < n; ++i) l[i] = Clean(logits[i]);
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

  // Step 3: weights and truncation. `order` holds the candidates that
  // survive top-k and min-p; top-p then keeps a prefix of its sorted order.
  const float l_max = *std::max_element(l.begin(), l.end());
  const float t = p.temperature;
  std::vector<float>& w = scratch->weights;
  w.resize(n);
  auto weight = [&](size_t i) {
    return l[i] == l_max ? 1.0f : std::exp((l[i] - l_max) / t);
  };
  std::vector<int32_t>& order = scratch->order;
  const HigherLogitFirst less{l.data()};
  double w_all = 0;     // W: total weight after top-k
  double w_minp = 0;    // weight of the candidates that pass min-p too
  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < n) {
    order.resize(n);
    std::iota(order.begin(), order.end(), 0);
    std::nth_element(order.begin(), order.begin() + p.top_k, order.end(), less);
    order.resize(static_cast<size_t>(p.top_k));
    size_t kept = 0;
    for (const int32_t i : order) {
      w[i] = weight(i);
      w_all += w[i];
      if (w[i] >= p.min_p) {
        w_minp += w[i];
        order[kept++] = i;
      }
    }
    order.resize(kept);
  } else {
    order.clear();
    for (size_t i = 0; i < n; ++i) {
      w[i] = weight(i);
      w_all += w[i];
      if (w[i] >= p.min_p) {
        w_minp += w[i];
        order.push_back(static_cast<int32_t>(i));
      }
    }
  }
  // The max-logit token has weight 1 >= min_p, so `order` is never empty and
  // its sorted order starts with that token.
  LazySortedOrder sorted(&order, less);
  size_t n_kept = order.size();
  double w_kept = w_minp;
  if (p.top_p < 1.0f) {
    const double threshold = static_cast<double>(p.top_p) * w_all;
    double cum = 0;
    for (size_t i = 0; i < order.size(); ++i) {
      sorted.Need(i);
      cum += w[order[i]];
      if (cum >= threshold) {
        n_kept = i + 1;
        break;
      }
    }
    w_kept = cum;
  }

  // Step 4: inverse CDF over the kept prefix.
  const double target =
      static_cast<double>(UniformFloat(p.seed, stream, step, 0)) * w_kept;
  double cum = 0;
  int32_t chosen = -1;
  int32_t last_positive = order[0];
  for (size_t i = 0; i < n_kept; ++i) {
    sorted.Need(i);
    const int32_t id = order[i];
    if (w[id] > 0) last_positive = id;
    cum += w[id];
    if (target < cum) {
      chosen = id;
      break;
    }
  }
  if (chosen < 0) chosen = last_positive;
  result.token = chosen;
  result.logprob = raw_logprob(logits[chosen]);
  return result;
}

}  // namespace m40llm
