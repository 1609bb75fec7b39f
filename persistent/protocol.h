// The ring protocol between the host (front end, scheduler, prefill) and a
// decoder (persistent/decoder.h: the host decoder, the persistent CUDA
// kernel).
//
// Two single-producer/single-consumer rings live in one host-pinned block:
//   commands: host -> decoder  (admit a sequence, cancel a slot, shut down)
//   events:   decoder -> host  (a sampled token, a finished sequence)
// Records are fixed-size PODs with one layout for host and device code.
// Must stay valid C++17: CUDA sources include it.
//
// The decoder alone decides that a sequence ends on its own (an end-of-
// generation token, a stop id, max_tokens, a full context:
// persistent/termination.h), for every generated token including the first,
// which prefill sampled and the admit carries. Per sequence it emits, in
// order: kToken for steps 0, 1, 2, ... (each a token the client is to see),
// then exactly one kFinished. A token that stops the sequence (kStop) is not
// a kToken: the kFinished carries it in `token`, `pos` and `step`. The host
// ends sequences early (client cancel, deadline, stop string, drain) only
// through kCancel, which the decoder answers with kFinished/kCancelled unless
// the sequence had already finished.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "engine/sampling_params.h"
#include "persistent/config.h"

namespace m40llm {

// On-the-wire opcodes: never renumber.
enum class CommandOp : uint32_t {
  kNone = 0,
  kAdmit = 1,     // start decoding `slot` (its KV and history are already written)
  kCancel = 2,    // stop `slot` (if it still runs `seq_id`) at the next step boundary
  kShutdown = 3,  // finish the current step, cancel every active slot and exit
};

enum class EventKind : uint32_t {
  kNone = 0,
  kToken = 1,     // `token` sampled for `slot` at `pos`: stream it
  kFinished = 2,  // `slot` is free again; `reason` says why
};

enum class FinishReason : uint32_t {
  kNone = 0,
  kStop = 1,      // end-of-generation token or a stop token id
  kLength = 2,    // max_tokens reached, or the slot's context is full
  kCancelled = 3, // a cancel command (client cancel, deadline, stop string, drain)
  kError = 4,     // the decoder failed for this slot (or the admit was invalid)
};

// Everything the decoder needs to know about one sequence besides its
// tokens, copied into the slot on admit: how to sample (the request's
// SamplingParams as they are; engine/sampler.h gives the semantics) and when
// the sequence ends. The scheduler builds it once per request.
struct SamplingState {
  SamplingParams params;
  int32_t max_tokens;          // generated tokens allowed in total (incl. the first)
  int32_t ignore_eos;          // 0 or 1: end-of-generation tokens do not stop it
  int32_t n_stop_ids;          // entries used in stop_ids
  int32_t pad;
  int32_t stop_ids[kMaxStopIds];  // tokens that stop it like an end-of-generation token
};
static_assert(std::is_trivially_copyable<SamplingState>::value, "SamplingState must be POD");
static_assert(sizeof(SamplingState) == sizeof(SamplingParams) + 16 + 4 * kMaxStopIds,
              "SamplingState layout changed");

struct EventLogprob {
  int32_t token;
  float logprob;
};

// host -> decoder. For kAdmit: the slot's KV holds positions 0..pos-1, its
// token history holds the prompt and `first_token` (the decoder's
// WriteHistory), and `first_token` (the token prefill sampled, generated-token
// index 0, with its raw logprob and top-n) sits at `pos`: the decoder reports
// it (or ends the sequence on it) and feeds it at `pos`. kCancel needs `slot`
// and `seq_id`; kShutdown nothing.
struct alignas(16) Command {
  CommandOp op;
  int32_t slot;
  int32_t pos;
  int32_t first_token;
  uint64_t seq_id;        // the request's sequence number, echoed in events
  float first_logprob;    // kAdmit: raw log-probability of first_token
  int32_t first_n_top;    // kAdmit: entries used in first_top
  SamplingState sampling;  // kAdmit
  EventLogprob first_top[kMaxEventLogprobs];  // kAdmit: the first token's top-n
};
static_assert(std::is_trivially_copyable<Command>::value, "Command must be POD");
static_assert(sizeof(Command) == 32 + sizeof(SamplingState) + 8 * kMaxEventLogprobs,
              "Command layout changed");
static_assert(sizeof(Command) % 16 == 0, "Command must keep 16-byte alignment in arrays");

// decoder -> host.
struct alignas(16) Event {
  EventKind kind;
  int32_t slot;
  int32_t pos;         // kToken, kFinished/kStop: position of the token in the sequence
  int32_t token;       // kToken: the sampled token; kFinished/kStop: the stop token
  uint64_t seq_id;
  float logprob;       // kToken: raw log-probability of `token`
  FinishReason reason; // kFinished
  int32_t step;        // kToken, kFinished/kStop: generated-token index (0 = prefill's)
  int32_t n_top;       // entries used in top
  uint32_t decode_step;  // the decoder's step counter (events of one step share it)
  // The decode step's duration by the decoder's own clock, nanoseconds,
  // saturated at 2^32 - 1 (events of one step share it; 0 for events of
  // command handling, such as a first token or a cancel).
  uint32_t step_ns;
  EventLogprob top[kMaxEventLogprobs];
};
static_assert(std::is_trivially_copyable<Event>::value, "Event must be POD");
static_assert(sizeof(Event) == 48 + 8 * kMaxEventLogprobs, "Event layout changed");
static_assert(sizeof(Event) % 16 == 0, "Event must keep 16-byte alignment in arrays");

}  // namespace m40llm
