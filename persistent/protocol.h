// The ring protocol between the host (front end, scheduler, prefill) and the
// decoder (the CPU decode loop now, the persistent CUDA kernel later).
//
// Two single-producer/single-consumer rings live in one host-pinned block:
//   commands: host -> decoder  (admit a sequence, cancel a slot, shut down)
//   events:   decoder -> host  (a sampled token, a finished sequence)
// Records are fixed-size PODs with one layout for host and device code.
// Must stay valid C++17: CUDA sources include it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "persistent/config.h"

namespace m40llm {

// On-the-wire opcodes: never renumber.
enum class CommandOp : uint32_t {
  kNone = 0,
  kAdmit = 1,     // start decoding `slot` (its KV and history are already written)
  kCancel = 2,    // stop `slot` at the next step boundary
  kShutdown = 3,  // finish the current step and exit the loop
};

enum class EventKind : uint32_t {
  kNone = 0,
  kToken = 1,     // `token` sampled for `slot` at `pos`
  kFinished = 2,  // `slot` is free again; `reason` says why
};

enum class FinishReason : uint32_t {
  kNone = 0,
  kStop = 1,      // end-of-generation token or a stop token id
  kLength = 2,    // max_tokens reached, or the slot's context is full
  kCancelled = 3, // a cancel command (client cancel, deadline, stop string, drain)
  kError = 4,     // the decoder failed for this slot
};

// Per-sequence sampling state the decoder needs, copied into the slot on
// admit. The field meanings are those of SamplingParams (engine/sampler.h).
struct SamplingState {
  float temperature;
  float top_p;
  float min_p;
  float repetition_penalty;
  float presence_penalty;
  float frequency_penalty;
  int32_t top_k;
  int32_t penalty_last_n;
  uint64_t seed;
  int32_t n_logprobs;          // 0..kMaxEventLogprobs
  int32_t max_tokens;          // generated tokens allowed in total (incl. the first)
  int32_t ignore_eos;          // 0 or 1
  int32_t n_stop_ids;          // entries used in stop_ids
  int32_t pad[2];
  int32_t stop_ids[kMaxStopIds];
};
static_assert(std::is_trivially_copyable<SamplingState>::value, "SamplingState must be POD");
static_assert(sizeof(SamplingState) == 64 + 4 * kMaxStopIds, "SamplingState layout changed");

// host -> decoder. For kAdmit: the slot's KV holds positions 0..pos-1, its
// token history holds the prompt and `first_token`, and `first_token` (the
// token prefill sampled, generated-token index 0) is to be fed at `pos`.
struct alignas(16) Command {
  CommandOp op;
  int32_t slot;
  int32_t pos;
  int32_t first_token;
  uint64_t seq_id;  // the request's sequence number, echoed in events
  uint32_t pad[2];
  SamplingState sampling;
};
static_assert(std::is_trivially_copyable<Command>::value, "Command must be POD");
static_assert(sizeof(Command) == 32 + sizeof(SamplingState), "Command layout changed");
static_assert(sizeof(Command) % 16 == 0, "Command must keep 16-byte alignment in arrays");

struct EventLogprob {
  int32_t token;
  float logprob;
};

// decoder -> host.
struct alignas(16) Event {
  EventKind kind;
  int32_t slot;
  int32_t pos;         // kToken: position of the token in the sequence
  int32_t token;       // kToken: the sampled token
  uint64_t seq_id;
  float logprob;       // kToken: raw log-probability of `token`
  FinishReason reason; // kFinished
  int32_t step;        // kToken: generated-token index (0 = prefill's token)
  int32_t n_top;       // entries used in top
  uint32_t decode_step;  // the decoder's step counter (events of one step share it)
  uint32_t pad;
  EventLogprob top[kMaxEventLogprobs];
};
static_assert(std::is_trivially_copyable<Event>::value, "Event must be POD");
static_assert(sizeof(Event) == 48 + 8 * kMaxEventLogprobs, "Event layout changed");
static_assert(sizeof(Event) % 16 == 0, "Event must keep 16-byte alignment in arrays");

}  // namespace m40llm
