// The scheduler: a bounded FIFO admission queue in front of a fixed number of
// decode slots. A prefill worker batches queued prompts, writes their KV,
// samples each one's first token and admits it to the decoder
// (persistent/decoder.h) through the command ring; a dispatcher thread drains
// the event ring, detokenizes, detects stop strings and streams results to
// each request's observer. The decoder decides when a sequence ends on its
// own (end of generation, stop ids, max_tokens, a full context); the
// scheduler ends one early only for stop strings, deadlines, client cancels
// and shutdown. Sequences join and leave at step
// boundaries (continuous batching), and a request's tokens depend only on its
// own prompt, parameters and seed, never on what else is in the batch.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"
#include "persistent/decoder.h"

namespace m40llm {

using SteadyTime = std::chrono::steady_clock::time_point;

// One generation request, already tokenized and validated for syntax by the
// front end (the scheduler re-checks what depends on the model and slots).
struct GenerateRequest {
  std::string id;                      // echoed in logs; never empty here
  std::vector<int32_t> prompt;         // token ids (BOS included if wanted)
  SamplingParams sampling;             // incl. seed and n_logprobs
  int32_t max_tokens = 16;             // >= 1
  std::vector<std::string> stop;       // stop strings, matched in the text
  std::vector<int32_t> stop_ids;       // at most kMaxStopIds (persistent/config.h)
  bool ignore_eos = false;
  SteadyTime deadline = SteadyTime::max();
};

struct TokenOut {
  int32_t token = -1;
  float logprob = 0;
  std::vector<TokenLogprob> top;  // n_logprobs entries when asked for
};

// A piece of the stream: new tokens and the UTF-8-complete text they add.
struct StreamDelta {
  std::vector<TokenOut> tokens;
  std::string text;
};

enum class StreamFinish { kStop, kLength, kStopSequence, kCancelled };

struct FinalInfo {
  StreamFinish reason = StreamFinish::kStop;
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  double queue_seconds = 0;        // submit -> prefill start
  double ttft_seconds = 0;         // submit -> first token
  double decode_seconds = 0;       // first token -> last token
};

// Receives one request's stream. Calls come from scheduler threads, in
// order, never concurrently for one request; they must not block for long.
class StreamObserver {
 public:
  virtual ~StreamObserver() = default;
  virtual void OnDelta(StreamDelta delta) = 0;
  // Exactly once, last. OK: finished with info.reason. Otherwise the request
  // failed: DEADLINE_EXCEEDED, UNAVAILABLE (shutdown), INTERNAL (engine
  // fault), with info filled as far as it got.
  virtual void OnDone(const absl::Status& status, const FinalInfo& info) = 0;
};

// The status label of m40llm_requests_total for a status code: the code's
// name in lower snake case ("ok", "deadline_exceeded", ...). The scheduler
// and the server's front end both label requests with it.
std::string StatusLabel(absl::StatusCode code);

// Observability hooks; the server's Metrics implements them. Called from
// scheduler threads; implementations must be thread-safe and cheap.
class SchedulerMetrics {
 public:
  virtual ~SchedulerMetrics() = default;
  // status: "ok", "cancelled", "deadline_exceeded", "resource_exhausted", ...
  virtual void RequestDone(const std::string& status, const FinalInfo& info,
                           double duration_seconds) = 0;
  virtual void PromptTokens(int64_t n) = 0;
  virtual void GeneratedTokens(int64_t n) = 0;
  virtual void InterTokenLatency(double seconds) = 0;
  // One decode step of `batch_size` sequences that took `seconds` by the
  // decoder's own clock.
  virtual void DecodeStep(int batch_size, double seconds) = 0;
  virtual void Gauges(int queue_depth, int active_sequences, double kv_cache_usage) = 0;
};

struct SchedulerOptions {
  int max_batch = 8;        // slots: sequences decoding at once
  int ctx_per_slot = 2048;  // positions per slot (prompt + generated)
  int queue_size = 64;      // requests waiting for a slot
  int prefill_batch_tokens = 2048;  // most prompt tokens one prefill call runs
};

struct SchedulerStats {
  int queue_depth = 0;
  int active_sequences = 0;
  double kv_cache_usage = 0;  // positions in use / all positions
  uint64_t decode_steps = 0;
};

class Scheduler {
 public:
  // `backend` (which prefill runs on) and `decoder` (which runs `backend`
  // too, or the same model another way) must hold max_slots >=
  // opts.max_batch and ctx_per_slot >= opts.ctx_per_slot; the scheduler owns
  // the decoder, starts it and shuts it down. backend, tokenizer and metrics
  // (nullable) must outlive the scheduler. Starts its threads.
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(Backend* backend,
                                                           std::unique_ptr<Decoder> decoder,
                                                           const Tokenizer* tokenizer,
                                                           const SchedulerOptions& opts,
                                                           SchedulerMetrics* metrics);
  virtual ~Scheduler() = default;

  // Queues a request. Errors (nothing is queued, the observer is not called):
  // INVALID_ARGUMENT for bad token ids or parameters; OUT_OF_RANGE when
  // prompt + max_tokens exceeds ctx_per_slot; RESOURCE_EXHAUSTED when the
  // queue is full; UNAVAILABLE while draining or stopped. On success returns
  // a handle for Cancel().
  virtual absl::StatusOr<uint64_t> Submit(GenerateRequest req,
                                          std::shared_ptr<StreamObserver> observer) = 0;

  // Cancels a request: a queued one ends at once, a decoding one within one
  // decode step. OnDone gets `why` (e.g. CANCELLED for a client that went
  // away, DEADLINE_EXCEEDED), or OK with kCancelled when `why` is OK.
  // Unknown or finished handles are ignored.
  virtual void Cancel(uint64_t handle, const absl::Status& why) = 0;
  void Cancel(uint64_t handle) { Cancel(handle, absl::OkStatus()); }

  // Stops admitting new requests (Submit -> UNAVAILABLE); in-flight ones go on.
  virtual void StartDrain() = 0;
  // Waits until no request is queued or decoding; false on timeout.
  virtual bool WaitIdle(std::chrono::milliseconds timeout) = 0;
  // Ends every remaining request with UNAVAILABLE and stops the threads.
  virtual void Shutdown() = 0;

  virtual SchedulerStats stats() const = 0;
  virtual const SchedulerOptions& options() const = 0;
  // What Submit would answer right now for a request that passes
  // validation, without doing any work: UNAVAILABLE while draining, stopped
  // or after a fault, RESOURCE_EXHAUSTED when the queue is full; else OK.
  // The front end calls it before tokenizing.
  virtual absl::Status AdmissionCheck() const { return absl::OkStatus(); }
  // OK while the backend and the decoder can run; otherwise the first's
  // fault, else the second's.
  virtual absl::Status health() const { return absl::OkStatus(); }
  // The decoder's kind ("host", "persistent") and progress.
  virtual std::string decoder_kind() const { return ""; }
  virtual DecoderProgress decoder_progress() const { return {}; }
};

}  // namespace m40llm
