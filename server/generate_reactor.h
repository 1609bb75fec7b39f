// The reactor of one Generate call: a server-streaming callback reactor fed
// by the scheduler through a StreamObserver.
//
// Lifetimes. gRPC owns the reactor until OnDone(), where it deletes itself;
// the scheduler owns a shared_ptr to the observer for as long as it likes.
// The observer (GenerateObserver, in the .cc) therefore forwards to the
// reactor under its own mutex and is detached in OnDone(), after which
// scheduler calls find no reactor and do nothing. A forwarded call holds that
// mutex throughout, so OnDone() cannot delete the reactor under it.
//
// Writes. Exactly one write is in flight. Deltas that arrive meanwhile are
// merged into one pending message, sent when the write completes; the
// scheduler's final call becomes the last message (with finish_reason, usage,
// timings and seed) written together with the OK status, or the error status.
// OnCancel() (client gone, or its deadline passed) cancels the request in the
// scheduler, whose final call then finishes the RPC.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "engine/scheduler.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/server_callback.h"
#include "m40llm/v1/m40llm.pb.h"

namespace m40llm {

class GenerateObserver;
class Metrics;

class GenerateReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  // `scheduler` and `metrics` (nullable) must outlive the call. `method`
  // ("Generate", "Chat") and `request_id` name the call in logs (and the id
  // in responses), `peer` is the client's address (for the access log),
  // `deadline` the client's deadline.
  GenerateReactor(Scheduler* scheduler, Metrics* metrics, const char* method,
                  std::string request_id, std::string peer, SteadyTime deadline);

  // Ends the call with `status` (not OK) before it reaches the scheduler;
  // counted as a rejected request.
  void Reject(const absl::Status& status);

  // Submits `req` to the scheduler; rejects the call with the scheduler's
  // error when it refuses.
  void Start(GenerateRequest req);

  // grpc::ServerWriteReactor.
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  friend class GenerateObserver;
  using Clock = std::chrono::steady_clock;

  // Whether the client's deadline has passed or is about to.
  bool DeadlineNear() const;

  ~GenerateReactor() override;

  // From the observer (scheduler threads).
  void AddDelta(StreamDelta delta);
  void Complete(const absl::Status& status, const FinalInfo& info);

  // What to do with the stream once mu_ is released: gRPC operations are
  // started outside the lock.
  struct Action {
    enum Kind { kNone, kWrite, kWriteAndFinish, kFinish } kind = kNone;
    grpc::Status status;  // for the finishing kinds
  };

  // Decides the next operation: nothing while a write is in flight, else
  // the pending deltas, or the final message and status once the scheduler
  // is done.
  Action NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Action FinishLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SerializePendingLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool PendingEmptyLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ResetPendingLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Run(const Action& action) ABSL_LOCKS_EXCLUDED(mu_);

  Scheduler* const scheduler_;
  Metrics* const metrics_;
  const char* const method_;
  const std::string request_id_;
  const std::string peer_;
  const SteadyTime deadline_;
  const Clock::time_point start_ = Clock::now();
  std::shared_ptr<GenerateObserver> observer_;  // set by Start()

  absl::Mutex mu_;
  std::optional<uint64_t> handle_ ABSL_GUARDED_BY(mu_);  // from Submit
  int32_t prompt_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t seed_ ABSL_GUARDED_BY(mu_) = 0;
  bool want_logprobs_ ABSL_GUARDED_BY(mu_) = false;
  v1::GenerateResponse pending_ ABSL_GUARDED_BY(mu_);  // deltas not yet written
  // The message in flight: filled under mu_, then read by gRPC until the
  // write completes (one write at a time, so nothing races on it).
  grpc::ByteBuffer write_buf_;
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool stream_broken_ ABSL_GUARDED_BY(mu_) = false;  // cancelled or a write failed
  bool done_ ABSL_GUARDED_BY(mu_) = false;           // the scheduler finished
  bool finished_ ABSL_GUARDED_BY(mu_) = false;       // Finish() called
  absl::Status done_status_ ABSL_GUARDED_BY(mu_);    // the scheduler's final status
  FinalInfo info_ ABSL_GUARDED_BY(mu_);
  absl::Status cancel_status_ ABSL_GUARDED_BY(mu_);  // why OnCancel() came
  absl::Status final_status_ ABSL_GUARDED_BY(mu_);   // what the call ended with
  bool rejected_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace m40llm
