// Scheduler: admission queue, prefill worker, command/event rings to the
// decoder, and the dispatcher that turns events into streamed deltas.
//
// Threads: gRPC threads call Submit/Cancel; the prefill worker batches queued
// prompts and admits them; the decoder (persistent/) steps all slots and
// decides when each sequence ends; the dispatcher drains events,
// detokenizes, applies stop strings and deadlines.
// Lock order: Request::mu before Scheduler mu_, never the reverse. Command
// pushes come from several host threads and are serialised by cmd_mu_, so
// the ring itself stays single-producer.
#include "engine/scheduler.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "engine/status.h"
#include "persistent/protocol.h"
#include "persistent/ring.h"
#include "spdlog/spdlog.h"

namespace m40llm {
namespace {

using Clock = std::chrono::steady_clock;

double Secs(SteadyTime a, SteadyTime b) { return std::chrono::duration<double>(b - a).count(); }

enum class State { kQueued, kPrefill, kDecoding, kDone };

struct Request {
  uint64_t handle = 0;
  GenerateRequest req;
  std::shared_ptr<StreamObserver> obs;
  SteadyTime submitted, prefill_start, first_token, last_token;
  std::atomic<bool> cancel{false};           // Cancel() or deadline asked to stop
  std::atomic<int> positions{0};             // KV positions in use (for the gauge)
  int slot = -1;                             // guarded by the scheduler's mu_

  std::mutex mu;  // guards everything below
  State state = State::kQueued;
  absl::Status cancel_status;  // the status a cancellation ends with (OK = client cancel)
  std::unique_ptr<IncrementalDetokenizer> detok;
  std::string held;  // text held back: it may be the start of a stop string
  int completion = 0;
};

// The longest suffix of `text` that is a proper prefix of some stop string.
size_t HeldSuffix(const std::string& text, const std::vector<std::string>& stops) {
  size_t best = 0;
  for (const std::string& s : stops) {
    for (size_t n = std::min(s.size() - 1, text.size()); n > best; --n) {
      if (text.compare(text.size() - n, n, s, 0, n) == 0) {
        best = n;
        break;
      }
    }
  }
  return best;
}

// A request that ended OK but cancelled (Cancel without a status) counts as
// "cancelled", like one that ended with CANCELLED.
std::string RequestLabel(const absl::Status& s, StreamFinish reason) {
  if (s.ok() && reason == StreamFinish::kCancelled) return StatusLabel(absl::StatusCode::kCancelled);
  return StatusLabel(s.code());
}

class SchedulerImpl final : public Scheduler {
 public:
  SchedulerImpl(Backend* backend, std::unique_ptr<Decoder> decoder, const Tokenizer* tok,
                const SchedulerOptions& opts, SchedulerMetrics* metrics)
      : backend_(backend),
        decoder_(std::move(decoder)),
        rings_(decoder_->rings()),
        tok_(tok),
        opts_(opts),
        metrics_(metrics),
        slot_owner_(opts.max_batch) {
    for (int i = opts.max_batch - 1; i >= 0; --i) free_slots_.push_back(i);
  }

  ~SchedulerImpl() override { Shutdown(); }

  absl::Status Start() {
    RETURN_IF_ERROR(decoder_->Start());
    prefill_thread_ = std::thread([this] { PrefillLoop(); });
    dispatch_thread_ = std::thread([this] { DispatchLoop(); });
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> Submit(GenerateRequest req,
                                  std::shared_ptr<StreamObserver> observer) override {
    RETURN_IF_ERROR(Validate(req));
    RETURN_IF_ERROR(HealthForAdmission());
    auto r = std::make_shared<Request>();
    r->req = std::move(req);
    r->obs = std::move(observer);
    r->submitted = Clock::now();
    r->detok = std::make_unique<IncrementalDetokenizer>(*tok_);
    r->detok->ContinueAfter(r->req.prompt);
    {
      std::lock_guard<std::mutex> lock(mu_);
      RETURN_IF_ERROR(RoomLocked());
      r->handle = ++next_handle_;
      queue_.push_back(r);
      live_[r->handle] = r;
    }
    if (metrics_) metrics_->PromptTokens(static_cast<int64_t>(r->req.prompt.size()));
    cv_.notify_all();
    UpdateGauges();
    return r->handle;
  }

  void Cancel(uint64_t handle, const absl::Status& why) override { CancelWith(handle, why); }

  void StartDrain() override {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
  }

  bool WaitIdle(std::chrono::milliseconds timeout) override {
    std::unique_lock<std::mutex> lock(mu_);
    return idle_cv_.wait_for(lock, timeout, [&] { return live_.empty(); });
  }

  void Shutdown() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopped_) return;
      stopped_ = stopping_ = draining_ = true;
    }
    cv_.notify_all();
    if (prefill_thread_.joinable()) prefill_thread_.join();
    // Sequences the decoder still holds end cancelled; their requests fail
    // with UNAVAILABLE.
    std::vector<std::shared_ptr<Request>> in_flight;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [h, r] : live_) in_flight.push_back(r);
    }
    for (auto& r : in_flight) {
      std::lock_guard<std::mutex> lock(r->mu);
      r->cancel_status = absl::UnavailableError("the server shut down");
    }
    Command shutdown{};
    shutdown.op = CommandOp::kShutdown;
    PushCommand(shutdown);
    decoder_->Join();
    decoder_done_ = true;
    if (dispatch_thread_.joinable()) dispatch_thread_.join();
    // Whatever is left (queued, or never finished by the decoder) ends now.
    std::vector<std::shared_ptr<Request>> left;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [h, r] : live_) left.push_back(r);
      queue_.clear();
    }
    for (auto& r : left) {
      std::lock_guard<std::mutex> lock(r->mu);
      Finalize(*r, absl::UnavailableError("the server shut down"), StreamFinish::kCancelled);
    }
  }

  SchedulerStats stats() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return StatsLocked();
  }

  const SchedulerOptions& options() const override { return opts_; }
  absl::Status health() const override { return Health(); }
  absl::Status AdmissionCheck() const override {
    RETURN_IF_ERROR(HealthForAdmission());
    std::lock_guard<std::mutex> lock(mu_);
    return RoomLocked();
  }
  std::string decoder_kind() const override { return decoder_->kind(); }
  DecoderProgress decoder_progress() const override { return decoder_->progress(); }

 private:
  // The backend's health, else the decoder's.
  absl::Status Health() const {
    absl::Status h = backend_->health();
    return h.ok() ? decoder_->health() : h;
  }

  // Health() as Submit answers it: UNAVAILABLE with the fault.
  absl::Status HealthForAdmission() const {
    const absl::Status h = Health();
    if (h.ok()) return h;
    return absl::UnavailableError(
        absl::StrCat("the compute backend failed and serves no more requests: ", h.message()));
  }

  // Whether a new request can be queued now; mu_ held.
  absl::Status RoomLocked() const {
    if (draining_ || stopping_) {
      return absl::UnavailableError("the server is draining and accepts no new requests");
    }
    // Queued requests that free slots will take at once are not waiting.
    if (queue_.size() >= static_cast<size_t>(opts_.queue_size) + free_slots_.size()) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the admission queue is full (", opts_.queue_size, " requests waiting)"));
    }
    return absl::OkStatus();
  }

  absl::Status Validate(const GenerateRequest& req) const {
    const int n_vocab = backend_->config().n_vocab;
    if (req.prompt.empty()) return absl::InvalidArgumentError("the prompt has no tokens");
    for (int32_t t : req.prompt) {
      if (t < 0 || t >= n_vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat("prompt token id ", t, " is outside the vocabulary of ", n_vocab));
      }
    }
    if (req.max_tokens < 1) {
      return absl::InvalidArgumentError(absl::StrCat("max_tokens must be >= 1, got ", req.max_tokens));
    }
    if (static_cast<int64_t>(req.prompt.size()) + req.max_tokens > opts_.ctx_per_slot) {
      return absl::OutOfRangeError(absl::StrCat(
          "prompt (", req.prompt.size(), " tokens) + max_tokens (", req.max_tokens,
          ") exceeds the slot context of ", opts_.ctx_per_slot, " tokens"));
    }
    if (static_cast<int>(req.stop_ids.size()) > kMaxStopIds) {
      return absl::InvalidArgumentError(
          absl::StrCat("at most ", kMaxStopIds, " stop token ids are allowed"));
    }
    for (int32_t t : req.stop_ids) {
      if (t < 0 || t >= n_vocab) {
        return absl::InvalidArgumentError(absl::StrCat("stop token id ", t, " is unknown"));
      }
    }
    for (const std::string& s : req.stop) {
      if (s.empty()) return absl::InvalidArgumentError("stop strings must not be empty");
    }
    if (req.sampling.n_logprobs > kMaxEventLogprobs) {
      return absl::InvalidArgumentError(
          absl::StrCat("logprobs must be in 0..", kMaxEventLogprobs));
    }
    return req.sampling.Validate(n_vocab);
  }

  SchedulerStats StatsLocked() const {
    SchedulerStats s;
    s.queue_depth = static_cast<int>(queue_.size());
    int64_t used = 0;
    for (const auto& r : slot_owner_) {
      if (r) {
        ++s.active_sequences;
        used += r->positions.load(std::memory_order_relaxed);
      }
    }
    s.kv_cache_usage =
        static_cast<double>(used) / (static_cast<double>(opts_.max_batch) * opts_.ctx_per_slot);
    s.decode_steps = decode_steps_.load(std::memory_order_relaxed);
    return s;
  }

  void UpdateGauges() {
    if (!metrics_) return;
    SchedulerStats s = stats();
    metrics_->Gauges(s.queue_depth, s.active_sequences, s.kv_cache_usage);
  }

  void PushCommand(const Command& c) {
    {
      std::lock_guard<std::mutex> lock(cmd_mu_);
      while (!rings_->commands.TryPush(c)) {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
    decoder_->Notify();
  }

  Command CancelCommand(const Request& r) {
    Command c{};
    c.op = CommandOp::kCancel;
    c.slot = r.slot;
    c.seq_id = r.handle;
    return c;
  }

  void CancelWith(uint64_t handle, const absl::Status& why) {
    std::shared_ptr<Request> r;
    bool was_queued = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = live_.find(handle);
      if (it == live_.end()) return;
      r = it->second;
      auto q = std::find(queue_.begin(), queue_.end(), r);
      if (q != queue_.end()) {
        queue_.erase(q);
        was_queued = true;
      }
    }
    std::lock_guard<std::mutex> lock(r->mu);
    if (r->state == State::kDone) return;
    r->cancel_status = why;
    r->cancel = true;
    if (was_queued) {
      Finalize(*r, why, StreamFinish::kCancelled);
    } else if (r->state == State::kDecoding) {
      PushCommand(CancelCommand(*r));
      // A deadline ends the RPC now; the slot frees when the decoder confirms.
      if (!why.ok()) Finalize(*r, why, StreamFinish::kCancelled);
    }
    // kPrefill: the prefill worker sees `cancel` after its forward pass.
    UpdateGauges();
  }

  // Ends the request: flushes held text, calls OnDone, records metrics.
  // Called with r.mu held.
  void Finalize(Request& r, const absl::Status& status, StreamFinish reason) {
    if (r.state == State::kDone) return;
    const SteadyTime now = Clock::now();
    if (status.ok() && reason != StreamFinish::kStopSequence) {
      StreamDelta tail;
      tail.text = r.held + r.detok->Flush();
      r.held.clear();
      if (!tail.text.empty()) r.obs->OnDelta(std::move(tail));
    }
    const bool decoder_holds_slot = r.state == State::kDecoding;
    r.state = State::kDone;
    FinalInfo info;
    info.reason = reason;
    info.prompt_tokens = static_cast<int32_t>(r.req.prompt.size());
    info.completion_tokens = r.completion;
    const SteadyTime started = r.prefill_start == SteadyTime() ? now : r.prefill_start;
    info.queue_seconds = Secs(r.submitted, started);
    if (r.completion > 0) {
      info.ttft_seconds = Secs(r.submitted, r.first_token);
      info.decode_seconds = Secs(r.first_token, r.last_token);
    }
    // A slot the decoder does not hold goes back before the client sees the
    // end, so stats read after a stream closes no longer count it. (A slot
    // the decoder holds comes back with the decoder's kFinished event.)
    if (!decoder_holds_slot) ReleaseSlot(r);
    // Count it before the client can see the end, so a scrape after the
    // stream closes always includes this request.
    if (metrics_) metrics_->RequestDone(RequestLabel(status, reason), info, Secs(r.submitted, now));
    r.obs->OnDone(status, info);
    {
      std::lock_guard<std::mutex> lock(mu_);
      live_.erase(r.handle);
      if (live_.empty()) idle_cv_.notify_all();
    }
  }

  // Streams one token the decoder reported (its end-of-generation, stop-id,
  // max_tokens and context decisions are made; this applies the deadline and
  // stop strings). r.mu held.
  void OnToken(Request& r, int32_t token, float logprob, const EventLogprob* top, int n_top) {
    if (r.state == State::kDone) return;
    const SteadyTime now = Clock::now();
    if (r.req.deadline <= now) {
      if (r.state == State::kDecoding) PushCommand(CancelCommand(r));
      Finalize(r, absl::DeadlineExceededError("the request deadline passed"),
               StreamFinish::kCancelled);
      return;
    }
    if (r.completion == 0) {
      r.first_token = now;
    } else if (metrics_) {
      metrics_->InterTokenLatency(Secs(r.last_token, now));
    }
    r.last_token = now;
    ++r.completion;
    if (metrics_) metrics_->GeneratedTokens(1);

    StreamDelta d;
    TokenOut out;
    out.token = token;
    out.logprob = logprob;
    for (int k = 0; k < n_top; ++k) out.top.push_back({top[k].token, top[k].logprob});
    d.tokens.push_back(std::move(out));
    std::string text = r.held + r.detok->Push(token);
    r.held.clear();
    if (!r.req.stop.empty()) {
      size_t cut = std::string::npos;
      for (const std::string& s : r.req.stop) cut = std::min(cut, text.find(s));
      if (cut != std::string::npos) {
        d.text = text.substr(0, cut);
        r.obs->OnDelta(std::move(d));
        if (r.state == State::kDecoding) PushCommand(CancelCommand(r));
        Finalize(r, absl::OkStatus(), StreamFinish::kStopSequence);
        return;
      }
      const size_t keep = HeldSuffix(text, r.req.stop);
      r.held = text.substr(text.size() - keep);
      text.resize(text.size() - keep);
    }
    d.text = std::move(text);
    r.obs->OnDelta(std::move(d));
  }

  void ReleaseSlot(Request& r) {
    std::lock_guard<std::mutex> lock(mu_);
    if (r.slot >= 0) {
      slot_owner_[r.slot].reset();
      free_slots_.push_back(r.slot);
      r.slot = -1;
    }
    cv_.notify_all();
  }

  void PrefillLoop() {
    SamplerScratch scratch;
    ForwardOutput out;
    std::vector<int32_t> history;
    for (;;) {
      std::vector<std::shared_ptr<Request>> batch;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || (!queue_.empty() && !free_slots_.empty()); });
        if (stopping_) return;
        int tokens = 0;
        while (!queue_.empty() && !free_slots_.empty()) {
          auto& next = queue_.front();
          const int n = static_cast<int>(next->req.prompt.size());
          if (!batch.empty() && tokens + n > opts_.prefill_batch_tokens) break;
          tokens += n;
          next->slot = free_slots_.back();
          free_slots_.pop_back();
          slot_owner_[next->slot] = next;
          batch.push_back(next);
          queue_.pop_front();
        }
      }
      const SteadyTime start = Clock::now();
      std::vector<SeqChunk> chunks;
      for (auto& r : batch) {
        std::lock_guard<std::mutex> lock(r->mu);
        r->state = State::kPrefill;
        r->prefill_start = start;
        r->positions = static_cast<int>(r->req.prompt.size());
        chunks.push_back({r->slot, 0, r->req.prompt, false});
      }
      UpdateGauges();
      const absl::Status st = backend_->Forward(chunks, &out);
      const int n_vocab = backend_->config().n_vocab;
      for (size_t b = 0; b < batch.size(); ++b) {
        Request& r = *batch[b];
        std::unique_lock<std::mutex> lock(r.mu);
        if (!st.ok()) {
          Finalize(r, absl::InternalError(absl::StrCat("prefill failed: ", st.message())),
                   StreamFinish::kCancelled);
        } else if (r.cancel) {
          Finalize(r, r.cancel_status, StreamFinish::kCancelled);
        } else if (r.req.deadline <= Clock::now()) {
          Finalize(r, absl::DeadlineExceededError("the request deadline passed"),
                   StreamFinish::kCancelled);
        } else {
          // The first token is sampled here, from the prefill logits; the
          // decoder reports it (or ends the sequence on it) like the others.
          const size_t n = r.req.prompt.size();
          const SampleResult s = Sample({out.logits.data() + b * n_vocab, size_t(n_vocab)},
                                        r.req.sampling, r.req.prompt, 0, 0, &scratch);
          history.assign(r.req.prompt.begin(), r.req.prompt.end());
          history.push_back(s.token);
          const absl::Status h = decoder_->WriteHistory(r.slot, history);
          if (!h.ok()) {
            Finalize(r, absl::InternalError(absl::StrCat("admit failed: ", h.message())),
                     StreamFinish::kCancelled);
          } else {
            PushCommand(AdmitCommand(r, static_cast<int32_t>(n), s));
            r.state = State::kDecoding;
            r.positions = static_cast<int>(n) + 1;
            continue;  // the slot now belongs to the decoder
          }
        }
        lock.unlock();
        ReleaseSlot(r);
      }
      UpdateGauges();
    }
  }

  // The admit for `r`, whose prompt of `n` tokens prefill wrote and whose
  // first token it sampled as `first`. The request's parameters become the
  // slot's SamplingState here, once.
  static Command AdmitCommand(const Request& r, int32_t n, const SampleResult& first) {
    Command c{};
    c.op = CommandOp::kAdmit;
    c.slot = r.slot;
    c.pos = n;
    c.first_token = first.token;
    c.first_logprob = first.logprob;
    c.first_n_top = static_cast<int32_t>(std::min<size_t>(first.top.size(), kMaxEventLogprobs));
    for (int k = 0; k < c.first_n_top; ++k) c.first_top[k] = {first.top[k].token, first.top[k].logprob};
    c.seq_id = r.handle;
    const GenerateRequest& q = r.req;
    c.sampling.params = q.sampling;
    c.sampling.max_tokens = q.max_tokens;
    c.sampling.ignore_eos = q.ignore_eos ? 1 : 0;
    c.sampling.n_stop_ids = static_cast<int32_t>(q.stop_ids.size());
    for (int i = 0; i < c.sampling.n_stop_ids; ++i) c.sampling.stop_ids[i] = q.stop_ids[i];
    return c;
  }

  std::shared_ptr<Request> OwnerOf(int slot, uint64_t seq_id) {
    std::lock_guard<std::mutex> lock(mu_);
    if (slot < 0 || slot >= opts_.max_batch) return nullptr;
    auto& r = slot_owner_[slot];
    return r && r->handle == seq_id ? r : nullptr;
  }

  void HandleEvent(const Event& e) {
    std::shared_ptr<Request> r = OwnerOf(e.slot, e.seq_id);
    if (!r) return;
    if (e.kind == EventKind::kToken) {
      r->positions = e.pos + 1;
      std::lock_guard<std::mutex> lock(r->mu);
      if (r->state == State::kDone) return;
      // A stop string or deadline found here was cancelled inside OnToken;
      // the slot frees with the decoder's kFinished.
      OnToken(*r, e.token, e.logprob, e.top, e.n_top);
    } else if (e.kind == EventKind::kFinished) {
      ReleaseSlot(*r);  // the decoder has let go of it; free it before OnDone
      {
        std::lock_guard<std::mutex> lock(r->mu);
        switch (e.reason) {
          case FinishReason::kStop: Finalize(*r, absl::OkStatus(), StreamFinish::kStop); break;
          case FinishReason::kLength: Finalize(*r, absl::OkStatus(), StreamFinish::kLength); break;
          case FinishReason::kCancelled:
            Finalize(*r, r->cancel_status, StreamFinish::kCancelled);
            break;
          case FinishReason::kError:
          case FinishReason::kNone: {
            // Say why when the backend or decoder knows (a device fault).
            const absl::Status h = Health();
            Finalize(*r,
                     absl::InternalError(h.ok() ? std::string("the decoder failed on this sequence")
                                                : absl::StrCat("the decoder failed on this "
                                                               "sequence: ",
                                                               h.message())),
                     StreamFinish::kCancelled);
            break;
          }
        }
      }
    }
  }

  // A decoder or backend that has failed for good (a sticky device fault, a
  // hung persistent kernel) sends no more events: every request in flight
  // ends now with INTERNAL and the reason; Submit refuses new ones.
  void CheckHealth() {
    if (health_failed_) return;
    const absl::Status h = Health();
    if (h.ok()) return;
    health_failed_ = true;
    spdlog::error("the decoder failed; ending every request in flight: {}", std::string(h.message()));
    std::vector<std::shared_ptr<Request>> all;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [handle, r] : live_) all.push_back(r);
      queue_.clear();
    }
    for (auto& r : all) {
      std::lock_guard<std::mutex> lock(r->mu);
      Finalize(*r, absl::InternalError(absl::StrCat("the decoder failed: ", h.message())),
               StreamFinish::kCancelled);
    }
    UpdateGauges();
  }

  void CheckDeadlines() {
    const SteadyTime now = Clock::now();
    std::vector<uint64_t> expired;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [h, r] : live_) {
        if (r->req.deadline <= now && !r->cancel) expired.push_back(h);
      }
    }
    for (uint64_t h : expired) {
      CancelWith(h, absl::DeadlineExceededError("the request deadline passed"));
    }
  }

  void DispatchLoop() {
    uint32_t step = 0;
    int step_tokens = 0;
    double step_seconds = 0;
    SteadyTime last_deadline_check = Clock::now();
    for (;;) {
      Event e;
      bool any = false;
      while (rings_->events.TryPop(&e)) {
        any = true;
        if (e.decode_step != step) {
          if (step_tokens > 0 && metrics_) metrics_->DecodeStep(step_tokens, step_seconds);
          if (e.decode_step > step) decode_steps_ += e.decode_step - step;
          step = e.decode_step;
          step_tokens = 0;
        }
        // Only decode steps' tokens count towards the batch size; the first
        // token of a sequence comes from its prefill.
        if (e.kind == EventKind::kToken && e.step > 0) {
          ++step_tokens;
          step_seconds = 1e-9 * e.step_ns;
        }
        HandleEvent(e);
      }
      if (any) {
        if (step_tokens > 0 && metrics_) metrics_->DecodeStep(step_tokens, step_seconds);
        step_tokens = 0;
        UpdateGauges();
      } else if (decoder_done_) {
        return;
      } else {
        // Nothing to read: sleep until the decoder signals, waking every
        // 5 ms for deadlines while requests are live, else every 100 ms.
        bool live;
        {
          std::lock_guard<std::mutex> lock(mu_);
          live = !live_.empty();
        }
        decoder_->WaitForEvents(std::chrono::milliseconds(live ? 5 : 100));
      }
      const SteadyTime now = Clock::now();
      if (now - last_deadline_check > std::chrono::milliseconds(5)) {
        last_deadline_check = now;
        CheckDeadlines();
        CheckHealth();
      }
    }
  }

  Backend* backend_;
  std::unique_ptr<Decoder> decoder_;
  RingBlock* rings_;  // the decoder's
  const Tokenizer* tok_;
  SchedulerOptions opts_;
  SchedulerMetrics* metrics_;

  mutable std::mutex mu_;
  std::condition_variable cv_;       // prefill worker: queue or slots changed
  std::condition_variable idle_cv_;  // WaitIdle
  std::deque<std::shared_ptr<Request>> queue_;
  std::unordered_map<uint64_t, std::shared_ptr<Request>> live_;
  std::vector<std::shared_ptr<Request>> slot_owner_;
  std::vector<int> free_slots_;
  uint64_t next_handle_ = 0;
  bool draining_ = false, stopping_ = false, stopped_ = false;

  std::mutex cmd_mu_;
  std::atomic<bool> decoder_done_{false};
  bool health_failed_ = false;  // dispatcher thread only
  std::atomic<uint64_t> decode_steps_{0};
  std::thread prefill_thread_, dispatch_thread_;
};

}  // namespace

std::string StatusLabel(absl::StatusCode code) {
  std::string name = absl::StatusCodeToString(code);
  if (name.empty()) return "unknown";
  absl::AsciiStrToLower(&name);
  return name;
}

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(Backend* backend,
                                                             std::unique_ptr<Decoder> decoder,
                                                             const Tokenizer* tokenizer,
                                                             const SchedulerOptions& opts,
                                                             SchedulerMetrics* metrics) {
  if (backend == nullptr || decoder == nullptr || tokenizer == nullptr) {
    return absl::InvalidArgumentError("the scheduler needs a backend, a decoder and a tokenizer");
  }
  if (opts.max_batch < 1 || opts.max_batch > kMaxSlots) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_batch must be in 1..", kMaxSlots, ", got ", opts.max_batch));
  }
  if (opts.max_batch > backend->options().max_slots ||
      opts.ctx_per_slot > backend->options().ctx_per_slot || opts.ctx_per_slot < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the backend holds ", backend->options().max_slots, " slots of ",
        backend->options().ctx_per_slot, " positions; asked for ", opts.max_batch, " of ",
        opts.ctx_per_slot));
  }
  if (opts.queue_size < 0) return absl::InvalidArgumentError("queue_size must be >= 0");
  const DecoderOptions& d = decoder->options();
  if (opts.max_batch > d.max_slots || opts.ctx_per_slot > d.ctx_per_slot) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the decoder holds ", d.max_slots, " slots of ", d.ctx_per_slot,
        " positions; asked for ", opts.max_batch, " of ", opts.ctx_per_slot));
  }
  auto s = std::make_unique<SchedulerImpl>(backend, std::move(decoder), tokenizer, opts, metrics);
  RETURN_IF_ERROR(s->Start());
  return s;
}

}  // namespace m40llm
