// The host decoder: see host_decoder.h for the step semantics.
#include "persistent/host_decoder.h"

#include <algorithm>
#include <chrono>
#include <string>

#include "absl/strings/str_cat.h"
#include "persistent/termination.h"
#include "spdlog/spdlog.h"

namespace m40llm {
namespace {

int64_t SteadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

absl::StatusOr<std::unique_ptr<HostDecoder>> HostDecoder::Create(Backend* backend,
                                                                 const DecoderOptions& opts) {
  if (backend == nullptr) return absl::InvalidArgumentError("the host decoder needs a backend");
  if (opts.max_slots < 1 || opts.max_slots > kMaxSlots) {
    return absl::InvalidArgumentError(
        absl::StrCat("decoder slots must be in 1..", kMaxSlots, ", got ", opts.max_slots));
  }
  if (opts.ctx_per_slot < 2 || opts.max_slots > backend->options().max_slots ||
      opts.ctx_per_slot > backend->options().ctx_per_slot) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the backend holds ", backend->options().max_slots, " slots of ",
        backend->options().ctx_per_slot, " positions; the decoder asked for ", opts.max_slots,
        " of ", opts.ctx_per_slot));
  }
  return std::unique_ptr<HostDecoder>(new HostDecoder(backend, opts));
}

HostDecoder::HostDecoder(Backend* backend, const DecoderOptions& opts)
    : backend_(backend),
      opts_(opts),
      rings_(AllocateRingBlock()),
      history_(static_cast<size_t>(opts.max_slots) * opts.ctx_per_slot, 0),
      slots_(opts.max_slots) {}

HostDecoder::~HostDecoder() {
  // The scheduler shuts the decoder down before it lets go of it; a decoder
  // dropped while running (an owner that failed half-way) stops the same way.
  // Whoever produced commands is gone by now, so this push has no rival.
  if (thread_.joinable()) {
    Command shutdown{};
    shutdown.op = CommandOp::kShutdown;
    rings_->commands.PushWait(shutdown, std::chrono::seconds(10));
    Notify();
  }
  Join();
}

absl::Status HostDecoder::WriteHistory(int slot, std::span<const int32_t> tokens) {
  if (slot < 0 || slot >= opts_.max_slots) {
    return absl::InvalidArgumentError(absl::StrCat("history for slot ", slot, ": outside 0..",
                                                   opts_.max_slots - 1));
  }
  if (tokens.size() > static_cast<size_t>(opts_.ctx_per_slot)) {
    return absl::InvalidArgumentError(absl::StrCat("history of ", tokens.size(),
                                                   " tokens exceeds the slot context of ",
                                                   opts_.ctx_per_slot));
  }
  // The decoder does not touch an inactive slot's row; the kAdmit push
  // (a release) orders these writes before the decoder's pop (an acquire).
  std::copy(tokens.begin(), tokens.end(), History(slot));
  return absl::OkStatus();
}

absl::Status HostDecoder::Start() {
  std::lock_guard<std::mutex> lock(start_mu_);
  if (started_) return absl::FailedPreconditionError("the decoder was already started");
  started_ = true;
  thread_ = std::thread([this] { Run(); });
  return absl::OkStatus();
}

void HostDecoder::Join() {
  std::lock_guard<std::mutex> lock(start_mu_);
  if (thread_.joinable()) thread_.join();
}

DecoderProgress HostDecoder::progress() const {
  DecoderProgress p;
  p.steps = steps_done_.load(std::memory_order_relaxed);
  p.active_slots = active_.load(std::memory_order_relaxed);
  if (p.active_slots > 0) {
    p.seconds_since_step = 1e-9 * static_cast<double>(SteadyNs() - last_step_end_ns_.load());
  }
  return p;
}

void HostDecoder::Notify() {
  {
    std::lock_guard<std::mutex> lock(wake_mu_);
    wake_ = true;
  }
  wake_cv_.notify_one();
}

void HostDecoder::SignalEvents() {
  if (!emitted_) return;
  emitted_ = false;
  {
    std::lock_guard<std::mutex> lock(events_mu_);
    events_ = true;
  }
  events_cv_.notify_all();
}

void HostDecoder::WaitForEvents(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(events_mu_);
  events_cv_.wait_for(lock, timeout, [&] { return events_ || !rings_->events.Empty(); });
  events_ = false;
}

void HostDecoder::Run() {
  for (;;) {
    step_ns_ = 0;  // events of command handling belong to no step
    const bool running = ApplyCommands();
    SignalEvents();
    if (!running) {
      active_ = 0;
      return;
    }
    const int n = static_cast<int>(
        std::count_if(slots_.begin(), slots_.end(), [](const Slot& s) { return s.active; }));
    if (active_.exchange(n) == 0 && n > 0) last_step_end_ns_ = SteadyNs();  // busy from now
    if (n == 0) {
      // Idle: sleep until a command is pushed (Notify). The timeout only
      // bounds the damage of a producer that forgets to notify.
      std::unique_lock<std::mutex> lock(wake_mu_);
      wake_cv_.wait_for(lock, std::chrono::milliseconds(100),
                        [&] { return wake_ || !rings_->commands.Empty(); });
      wake_ = false;
      continue;
    }
    Step();
    SignalEvents();
    ++steps_done_;
    last_step_end_ns_ = SteadyNs();
  }
}

bool HostDecoder::ApplyCommands() {
  Command c;
  while (rings_->commands.TryPop(&c)) {
    switch (c.op) {
      case CommandOp::kAdmit:
        Admit(c);
        break;
      case CommandOp::kCancel:
        if (c.slot >= 0 && c.slot < opts_.max_slots && slots_[c.slot].active &&
            slots_[c.slot].seq_id == c.seq_id) {
          Finish(c.slot, FinishReason::kCancelled);
        }
        break;
      case CommandOp::kShutdown:
        for (int i = 0; i < opts_.max_slots; ++i) {
          if (slots_[i].active) Finish(i, FinishReason::kCancelled);
        }
        return false;
      case CommandOp::kNone:
        break;
    }
  }
  return true;
}

void HostDecoder::Admit(const Command& c) {
  const int n_vocab = backend_->config().n_vocab;
  const bool slot_ok = c.slot >= 0 && c.slot < opts_.max_slots && !slots_[c.slot].active;
  if (!slot_ok || c.pos < 0 || c.pos >= opts_.ctx_per_slot || c.first_token < 0 ||
      c.first_token >= n_vocab || c.sampling.max_tokens < 1 || c.first_n_top < 0 ||
      c.first_n_top > kMaxEventLogprobs) {
    spdlog::error("host decoder: invalid admit of sequence {} to slot {} at position {}",
                  c.seq_id, c.slot, c.pos);
    Event e{};
    e.kind = EventKind::kFinished;
    e.slot = c.slot;
    e.seq_id = c.seq_id;
    e.pos = c.pos;
    e.reason = FinishReason::kError;
    e.decode_step = decode_step_;
    e.step_ns = step_ns_;
    Emit(e);
    return;
  }
  Slot& s = slots_[c.slot];
  s.active = true;
  s.seq_id = c.seq_id;
  s.state = c.sampling;
  History(c.slot)[c.pos] = c.first_token;
  Deliver(c.slot, c.first_token, c.first_logprob, c.first_top, c.first_n_top, c.pos, 0);
}

void HostDecoder::Emit(const Event& e) {
  emitted_ = true;
  if (rings_->events.TryPush(e)) return;
  // Backpressure, never overwrite: let the consumer at what is there, and
  // wait for room (the ring's own backoff: spin, yield, short sleeps).
  SignalEvents();
  emitted_ = true;
  rings_->events.PushWait(e, std::chrono::nanoseconds::max());
}

void HostDecoder::Finish(int slot, FinishReason reason) {
  Slot& s = slots_[slot];
  Event e{};
  e.kind = EventKind::kFinished;
  e.slot = slot;
  e.pos = s.pos;
  e.seq_id = s.seq_id;
  e.reason = reason;
  e.decode_step = decode_step_;
  e.step_ns = step_ns_;
  Emit(e);
  s.active = false;
}

void HostDecoder::Deliver(int slot, int32_t token, float logprob, const EventLogprob* top,
                          int n_top, int32_t pos, int32_t step) {
  Slot& s = slots_[slot];
  const FinishReason why =
      FinishAfter(s.state, opts_.eog_ids.data(), static_cast<int>(opts_.eog_ids.size()), token,
                  step, pos, opts_.ctx_per_slot);
  Event e{};
  e.slot = slot;
  e.pos = pos;
  e.token = token;
  e.seq_id = s.seq_id;
  e.step = step;
  e.decode_step = decode_step_;
  e.step_ns = step_ns_;
  if (why == FinishReason::kStop) {
    e.kind = EventKind::kFinished;
    e.reason = FinishReason::kStop;
    Emit(e);
    s.active = false;
    return;
  }
  e.kind = EventKind::kToken;
  e.logprob = logprob;
  e.n_top = std::clamp(n_top, 0, kMaxEventLogprobs);
  std::copy(top, top + e.n_top, e.top);
  Emit(e);
  s.pos = pos;
  if (why == FinishReason::kLength) {
    Finish(slot, FinishReason::kLength);
    return;
  }
  s.next = token;
  s.step = step + 1;
}

void HostDecoder::Step() {
  ++decode_step_;
  batch_.clear();
  specs_.clear();
  order_.clear();
  for (int i = 0; i < opts_.max_slots; ++i) {
    const Slot& s = slots_[i];
    if (!s.active) continue;
    batch_.push_back({i, s.pos, {&s.next, 1}, false});
    // The history holds positions 0..pos (the token fed now included).
    specs_.push_back({&s.state.params, {History(i), static_cast<size_t>(s.pos) + 1},
                      /*stream=*/0, static_cast<uint64_t>(s.step)});
    order_.push_back(i);
  }
  const int64_t t0 = SteadyNs();
  const absl::Status st = backend_->ForwardSample(batch_, specs_, &samples_);
  step_ns_ = static_cast<uint32_t>(std::min<int64_t>(SteadyNs() - t0, UINT32_MAX));
  if (!st.ok()) {
    spdlog::error("decode step {} failed: {}", decode_step_, std::string(st.message()));
    for (int i : order_) Finish(i, FinishReason::kError);
    return;
  }
  EventLogprob top[kMaxEventLogprobs];
  for (size_t b = 0; b < order_.size(); ++b) {
    const int i = order_[b];
    const SampleResult& r = samples_[b];
    const int32_t pos = slots_[i].pos + 1;
    History(i)[pos] = r.token;  // pos < ctx_per_slot: FinishAfter ended the slot before
    const int n_top = static_cast<int>(std::min<size_t>(r.top.size(), kMaxEventLogprobs));
    for (int k = 0; k < n_top; ++k) top[k] = {r.top[k].token, r.top[k].logprob};
    Deliver(i, r.token, r.logprob, top, n_top, pos, slots_[i].step);
  }
}

}  // namespace m40llm
