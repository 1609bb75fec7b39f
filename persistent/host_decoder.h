// The host decoder (`--decoder host`): a thread that consumes the command
// ring and produces the event ring with exactly the semantics the persistent
// CUDA kernel has, running one Backend::ForwardSample per step (on a GPU
// backend that is one launch sequence, or one graph replay, per step). It is
// the reference executor other decoders are diffed against, and the fallback.
//
// One step, in order:
//  1. Apply every pending command:
//     - kAdmit: the slot becomes active; the first token (the command's, which
//       prefill sampled) goes through FinishAfter (persistent/termination.h)
//       and is reported like any other. An admit for a slot out of range or
//       already active, or with a bad position or max_tokens, is answered
//       with kFinished/kError for its seq_id and changes nothing.
//     - kCancel: an active slot running that seq_id ends with
//       kFinished/kCancelled; anything else is ignored (the sequence ended).
//     - kShutdown: every active slot ends with kFinished/kCancelled, then the
//       thread exits.
//  2. With no active slot, wait for commands (poll with backoff).
//  3. One forward pass over every active slot, one token each, slots in
//     ascending order, then per slot: append the sampled token to the
//     history and report it (kToken, then kFinished when FinishAfter says
//     so). A forward-pass error finishes every active slot with kError.
// Events are pushed with backpressure: a full event ring makes it wait.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/sampler.h"
#include "persistent/decoder.h"
#include "persistent/protocol.h"
#include "persistent/ring.h"

namespace m40llm {

class HostDecoder final : public Decoder {
 public:
  // `backend` must hold at least opts.max_slots slots of opts.ctx_per_slot
  // positions and outlive the decoder.
  static absl::StatusOr<std::unique_ptr<HostDecoder>> Create(Backend* backend,
                                                             const DecoderOptions& opts);
  ~HostDecoder() override;
  HostDecoder(const HostDecoder&) = delete;
  HostDecoder& operator=(const HostDecoder&) = delete;

  std::string kind() const override { return "host"; }
  const DecoderOptions& options() const override { return opts_; }
  RingBlock* rings() override { return rings_.get(); }
  absl::Status WriteHistory(int slot, std::span<const int32_t> tokens) override;
  absl::Status Start() override;
  void Join() override;
  absl::Status health() const override { return backend_->health(); }
  DecoderProgress progress() const override;
  // Wakes the idle decoder thread: it sleeps on a condition variable while
  // it holds no sequence, instead of polling.
  void Notify() override;
  // Sleeps until the decoder has emitted events (it signals once per step
  // and per batch of commands), or `timeout`.
  void WaitForEvents(std::chrono::milliseconds timeout) override;

 private:
  struct Slot {
    bool active = false;
    uint64_t seq_id = 0;
    int32_t pos = 0;   // where `next` is fed
    int32_t next = 0;  // token to feed this step
    int32_t step = 0;  // generated-token index of the token sampled next
    SamplingState state;
  };

  HostDecoder(Backend* backend, const DecoderOptions& opts);
  void Run();
  // Returns false after a shutdown command.
  bool ApplyCommands();
  void Admit(const Command& c);
  void Step();
  // Reports generated token `step` of `slot` at `pos` and ends the slot when
  // FinishAfter says so; otherwise it is fed next step.
  void Deliver(int slot, int32_t token, float logprob, const EventLogprob* top, int n_top,
               int32_t pos, int32_t step);
  void Emit(const Event& e);
  // Wakes a WaitForEvents caller after a batch of Emits.
  void SignalEvents();
  void Finish(int slot, FinishReason reason);
  int32_t* History(int slot) { return history_.data() + static_cast<size_t>(slot) * opts_.ctx_per_slot; }

  Backend* backend_;
  DecoderOptions opts_;
  RingBlockPtr rings_;
  std::vector<int32_t> history_;  // (max_slots, ctx_per_slot) token ids
  std::vector<Slot> slots_;
  std::vector<SampleResult> samples_;
  std::vector<SeqChunk> batch_;
  std::vector<SampleSpec> specs_;
  std::vector<int> order_;
  uint32_t decode_step_ = 0;
  uint32_t step_ns_ = 0;  // the current step's duration, for its events
  // Read by progress() from other threads.
  std::atomic<uint64_t> steps_done_{0};
  std::atomic<int> active_{0};
  std::atomic<int64_t> last_step_end_ns_{0};  // steady clock
  std::mutex wake_mu_;  // commands pushed: wake_ set, wake_cv_ notified
  std::condition_variable wake_cv_;
  bool wake_ = false;
  std::mutex events_mu_;  // events emitted: events_ set, events_cv_ notified
  std::condition_variable events_cv_;
  bool events_ = false;
  bool emitted_ = false;  // decoder thread: Emits since the last SignalEvents
  std::mutex start_mu_;
  bool started_ = false;
  std::thread thread_;
};

}  // namespace m40llm
