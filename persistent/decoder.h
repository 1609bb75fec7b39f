// The decoder interface: what the scheduler talks to, through the ring
// protocol only (persistent/protocol.h, persistent/ring.h).
//
// A decoder owns the ring block (host-pinned and device-mapped when it runs
// on a GPU) and the token history of every slot (device memory for a GPU
// decoder). The scheduler is the single producer of its commands and the
// single consumer of its events; it prefills a sequence's KV on its own (the
// backend's Forward, on its own stream), writes the slot's history with
// WriteHistory, then admits it. The decoder steps every active slot, samples,
// decides when each sequence ends (persistent/termination.h) and reports it.
//
// Implementations: HostDecoder (persistent/host_decoder.h), a host thread
// that runs one ForwardSample per step on any backend; the reference every
// other decoder is diffed against. Built by server/backend_loader.h.
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "persistent/ring.h"

namespace m40llm {

// A decoder's progress, for metrics and watchdogs.
struct DecoderProgress {
  uint64_t steps = 0;               // decode steps completed
  int active_slots = 0;             // sequences it holds now
  double seconds_since_step = 0;    // since the last step completed; 0 while idle
};

struct DecoderOptions {
  int max_slots = 1;             // slots it can hold, <= kMaxSlots
  int ctx_per_slot = 0;          // positions per slot (prompt + generated)
  std::vector<int32_t> eog_ids;  // end-of-generation ids (Tokenizer::EogIds)
};

class Decoder {
 public:
  virtual ~Decoder() = default;

  // "host" or "persistent": what --decoder names.
  virtual std::string kind() const = 0;
  virtual const DecoderOptions& options() const = 0;

  // The command and event rings, host view; valid for the decoder's life.
  virtual RingBlock* rings() = 0;

  // Writes the token history of `slot` (its prompt and the first generated
  // token: what positions 0 .. tokens.size() - 1 hold) before the kAdmit
  // that starts it. Only for a slot the decoder does not hold (never
  // admitted, or finished with a kFinished event the caller has read);
  // callable from any one thread while the decoder runs. Errors:
  // InvalidArgument for a bad slot or more tokens than ctx_per_slot.
  virtual absl::Status WriteHistory(int slot, std::span<const int32_t> tokens) = 0;

  // Starts consuming commands. Once only.
  virtual absl::Status Start() = 0;
  // Waits until the decoder has stopped: after a kShutdown command, which it
  // answers by finishing every active slot with kFinished/kCancelled before
  // it exits. Idempotent.
  virtual void Join() = 0;

  // OK while the decoder runs; after a fault it cannot recover from, why.
  virtual absl::Status health() const { return absl::OkStatus(); }

  // Progress so far; callable from any thread.
  virtual DecoderProgress progress() const = 0;

  // The command producer calls this after pushing commands, so that a
  // decoder that sleeps while idle wakes at once (one that polls the ring,
  // like a GPU kernel, ignores it).
  virtual void Notify() {}

  // The event consumer's wait: returns once the event ring may hold events,
  // or after `timeout`; it may return early. The default polls the ring
  // with a backoff (spin, yield, then sleeps of 50 us).
  virtual void WaitForEvents(std::chrono::milliseconds timeout);
};

}  // namespace m40llm
