// GenerateReactor: one Generate stream (see generate_reactor.h).
#include "server/generate_reactor.h"

#include <utility>

#include "absl/status/status.h"
#include "engine/unicode.h"
#include "server/metrics.h"
#include "server/payload.h"
#include "server/status.h"
#include "spdlog/spdlog.h"

namespace m40llm {

// The scheduler's view of a call: forwards to the reactor until detached.
class GenerateObserver final : public StreamObserver {
 public:
  explicit GenerateObserver(GenerateReactor* reactor) : reactor_(reactor) {}

  void OnDelta(StreamDelta delta) override {
    absl::MutexLock lock(&mu_);
    if (reactor_ != nullptr) reactor_->AddDelta(std::move(delta));
  }

  void OnDone(const absl::Status& status, const FinalInfo& info) override {
    absl::MutexLock lock(&mu_);
    if (reactor_ != nullptr) reactor_->Complete(status, info);
  }

  // After this returns no call reaches the reactor, and none is running.
  void Detach() {
    absl::MutexLock lock(&mu_);
    reactor_ = nullptr;
  }

 private:
  absl::Mutex mu_;
  GenerateReactor* reactor_ ABSL_GUARDED_BY(mu_);
};

namespace {

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

}  // namespace

GenerateReactor::GenerateReactor(Scheduler* scheduler, Metrics* metrics, const char* method,
                                 std::string request_id, std::string peer, SteadyTime deadline)
    : scheduler_(scheduler),
      metrics_(metrics),
      method_(method),
      request_id_(std::move(request_id)),
      peer_(std::move(peer)),
      deadline_(deadline) {
  absl::MutexLock lock(&mu_);
  ResetPendingLocked();
}

GenerateReactor::~GenerateReactor() = default;

bool GenerateReactor::DeadlineNear() const {
  // A client whose deadline passes cancels the stream itself, and that cancel
  // (or the failed write it causes) can reach us before our copy of the
  // deadline, taken when the request arrived, expires. Within 50 ms of the
  // deadline it is taken as the deadline, not as the client's choice.
  return std::chrono::steady_clock::now() + std::chrono::milliseconds(50) >= deadline_;
}

void GenerateReactor::Reject(const absl::Status& status) {
  Action action;
  {
    absl::MutexLock lock(&mu_);
    rejected_ = true;
    action = FinishLocked(status);
  }
  if (metrics_ != nullptr) metrics_->RequestRejected(StatusLabel(status.code()));
  Run(action);
}

void GenerateReactor::Start(GenerateRequest req) {
  {
    absl::MutexLock lock(&mu_);
    prompt_tokens_ = static_cast<int32_t>(req.prompt.size());
    seed_ = req.sampling.seed;
    want_logprobs_ = req.sampling.n_logprobs > 0;
  }
  observer_ = std::make_shared<GenerateObserver>(this);
  absl::StatusOr<uint64_t> handle = scheduler_->Submit(std::move(req), observer_);
  if (!handle.ok()) {
    observer_->Detach();
    Reject(handle.status());
    return;
  }
  // The observer may already have been called (even to the end); the handle
  // is only needed for Cancel(), which cannot come before this returns.
  absl::MutexLock lock(&mu_);
  handle_ = *handle;
}

void GenerateReactor::AddDelta(StreamDelta delta) {
  Action action;
  {
    absl::MutexLock lock(&mu_);
    if (done_ || finished_) return;
    for (const TokenOut& t : delta.tokens) {
      pending_.add_token_ids(t.token);
      if (!want_logprobs_) continue;
      v1::TokenLogprobs* lp = pending_.add_logprobs();
      lp->set_token(t.token);
      lp->set_logprob(t.logprob);
      for (const TokenLogprob& alt : t.top) {
        v1::TopLogprob* top = lp->add_top();
        top->set_token(alt.token);
        top->set_logprob(alt.logprob);
      }
    }
    pending_.mutable_text()->append(delta.text);
    action = NextLocked();
  }
  Run(action);
}

void GenerateReactor::Complete(const absl::Status& status, const FinalInfo& info) {
  Action action;
  {
    absl::MutexLock lock(&mu_);
    if (done_) return;
    done_ = true;
    done_status_ = status;
    info_ = info;
    action = NextLocked();
  }
  Run(action);
}

void GenerateReactor::OnWriteDone(bool ok) {
  Action action;
  std::optional<uint64_t> cancel;
  absl::Status why;
  {
    absl::MutexLock lock(&mu_);
    write_in_flight_ = false;
    if (!ok && !stream_broken_) {
      // The stream is gone; OnCancel() usually follows, but stop the work now.
      // A write that fails at the client's deadline is the deadline (its
      // expiry cancels the stream), as in OnCancel.
      stream_broken_ = true;
      cancel_status_ = DeadlineNear()
                           ? absl::DeadlineExceededError("the client's deadline passed")
                           : absl::CancelledError("the client went away (a write failed)");
      if (!done_) cancel = handle_;
    }
    why = cancel_status_;
    action = NextLocked();
  }
  if (cancel) scheduler_->Cancel(*cancel, why);
  Run(action);
}

void GenerateReactor::OnCancel() {
  Action action;
  std::optional<uint64_t> cancel;
  absl::Status why;
  {
    absl::MutexLock lock(&mu_);
    if (!stream_broken_) {
      stream_broken_ = true;
      cancel_status_ = DeadlineNear() ? absl::DeadlineExceededError("the client's deadline passed")
                                      : absl::CancelledError("the client cancelled the call");
    }
    if (!done_) cancel = handle_;
    why = cancel_status_;
    action = NextLocked();
  }
  // Outside the lock: the scheduler may end the request (and call the
  // observer, which takes mu_) before Cancel() returns. The scheduler ends it
  // with `why`, so metrics tell a deadline from a client's cancel.
  if (cancel) scheduler_->Cancel(*cancel, why);
  Run(action);
}

void GenerateReactor::OnDone() {
  if (observer_ != nullptr) observer_->Detach();
  {
    absl::MutexLock lock(&mu_);
    const double duration = Seconds(std::chrono::steady_clock::now() - start_);
    const std::string code = absl::StatusCodeToString(final_status_.code());
    if (final_status_.ok()) {
      spdlog::info(
          "{} id={} peer={} status={} finish={} prompt_tokens={} completion_tokens={} "
          "queue={:.3f}s ttft={:.3f}s duration={:.3f}s",
          method_, request_id_, peer_, code, FinishName(info_.reason), info_.prompt_tokens,
          info_.completion_tokens, info_.queue_seconds, info_.ttft_seconds, duration);
    } else {
      spdlog::info(
          "{} id={} peer={} status={} prompt_tokens={} completion_tokens={} ttft={:.3f}s "
          "duration={:.3f}s{} error=\"{}\"",
          method_, request_id_, peer_, code, rejected_ ? prompt_tokens_ : info_.prompt_tokens,
          info_.completion_tokens, info_.ttft_seconds, duration, rejected_ ? " rejected" : "",
          std::string(final_status_.message()));
    }
  }
  delete this;
}

GenerateReactor::Action GenerateReactor::NextLocked() {
  if (finished_ || write_in_flight_) return {};
  if (done_) {
    if (stream_broken_) return FinishLocked(cancel_status_);
    if (done_status_.ok()) {
      pending_.set_finish_reason(ToProtoFinishReason(info_.reason));
      pending_.mutable_usage()->set_prompt_tokens(info_.prompt_tokens);
      pending_.mutable_usage()->set_completion_tokens(info_.completion_tokens);
      v1::Timings* t = pending_.mutable_timings();
      t->set_queue_seconds(info_.queue_seconds);
      t->set_time_to_first_token_seconds(info_.ttft_seconds);
      t->set_decode_seconds(info_.decode_seconds);
      pending_.set_seed(seed_);
    } else if (PendingEmptyLocked()) {
      return FinishLocked(done_status_);
    }
    // The tokens still pending go out with the final status, even an error.
    if (absl::Status s = SerializePendingLocked(); !s.ok()) return FinishLocked(s);
    Action action = FinishLocked(done_status_);
    action.kind = Action::kWriteAndFinish;
    return action;
  }
  if (stream_broken_ || PendingEmptyLocked()) return {};
  if (absl::Status s = SerializePendingLocked(); !s.ok()) return FinishLocked(s);
  write_in_flight_ = true;
  return {Action::kWrite, grpc::Status::OK};
}

GenerateReactor::Action GenerateReactor::FinishLocked(const absl::Status& status) {
  finished_ = true;
  final_status_ = status;
  return {Action::kFinish, ToGrpcStatus(status)};
}

absl::Status GenerateReactor::SerializePendingLocked() {
  // The scheduler sends whole characters; repair anything else rather than
  // send a string the client's parser would reject.
  if (!IsValidUtf8(pending_.text())) *pending_.mutable_text() = SanitizeUtf8(pending_.text());
  absl::Status s = SerializeResponse(pending_, &write_buf_);
  ResetPendingLocked();
  return s;
}

bool GenerateReactor::PendingEmptyLocked() const {
  return pending_.token_ids_size() == 0 && pending_.text().empty();
}

void GenerateReactor::ResetPendingLocked() {
  pending_.Clear();
  pending_.set_request_id(request_id_);
}

void GenerateReactor::Run(const Action& action) {
  // write_buf_ is only touched again after the write completes, so it can be
  // handed to gRPC outside the lock.
  switch (action.kind) {
    case Action::kNone:
      break;
    case Action::kWrite:
      StartWrite(&write_buf_);
      break;
    case Action::kWriteAndFinish:
      StartWriteAndFinish(&write_buf_, grpc::WriteOptions(), action.status);
      break;
    case Action::kFinish:
      Finish(action.status);
      break;
  }
}

}  // namespace m40llm
