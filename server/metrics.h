// The server's Prometheus metrics: one Metrics object owns the registry, the
// m40llm_* metric families and, optionally, the HTTP listener that serves
// them at /metrics. The scheduler reports through the SchedulerMetrics
// interface; the gRPC front end adds RequestRejected for requests it refuses
// itself. docs/metrics.md lists every family.
#pragma once

#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/scheduler.h"
#include "persistent/decoder.h"

namespace prometheus {
class Counter;
class Exposer;
class Gauge;
class Histogram;
class Registry;
template <typename T>
class Family;
}  // namespace prometheus

namespace m40llm {

// Histogram bucket upper bounds (seconds unless noted); +Inf is implicit.
// They span the CPU reference backend on small models (milliseconds) up to
// large models on a Tesla M40 (tens of ms per token, seconds of prefill).

// Submit -> first token: a short prompt on a warm server up to long prefills
// behind a full queue.
inline constexpr double kTimeToFirstTokenBuckets[] = {
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 60};
// Gap between consecutive tokens of one stream; dense around 10-100 ms, the
// range of one decode step for 1B-13B models on M40-class GPUs.
inline constexpr double kInterTokenLatencyBuckets[] = {0.001, 0.0025, 0.005, 0.01,  0.015, 0.02,
                                                       0.03,  0.04,   0.05,  0.075, 0.1,   0.15,
                                                       0.2,   0.3,    0.5,   1,     2.5};
// Submit -> final response: single-token requests up to long generations.
inline constexpr double kRequestDurationBuckets[] = {0.05, 0.1, 0.25, 0.5, 1,   2.5, 5,
                                                     10,   20,  30,   60,  120, 300, 600};
// Submit -> prefill start: ~0 when a slot is free, seconds under overload.
inline constexpr double kQueueTimeBuckets[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                               0.5,   1,     2.5,  5,     10,   30,  60};
// One decode step by the decoder's own clock: a 1B model on an H100 (under a
// millisecond) up to a 13B model on a Tesla M40 or the CPU backend (seconds).
inline constexpr double kDecodeStepBuckets[] = {0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032,
                                                0.064,  0.128, 0.256, 0.512, 1,     2.5};
// Sequences per decode step (a count, not seconds): powers of two to 256.
inline constexpr double kDecodeBatchSizeBuckets[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};

// How Metrics::Create sets things up.
struct MetricsOptions {
  // "host:port" for the /metrics HTTP listener, e.g. "0.0.0.0:8002"; port 0
  // picks a free port. Empty: no listener (tests). A bracketed IPv6 host
  // ("[::]:8002") needs a civetweb built with IPv6; Debian 12's is not.
  std::string listen;
  // Labels of m40llm_build_info.
  std::string version;
  std::string backend;  // e.g. "cpu", "cuda"
  std::string device;   // e.g. "Tesla M40 24GB"
};

// Owns the Prometheus registry and every m40llm_* family. All methods are
// thread-safe.
class Metrics final : public SchedulerMetrics {
 public:
  // Builds the families and, when opts.listen is set, starts serving
  // /metrics there. INVALID_ARGUMENT for a malformed address, UNAVAILABLE
  // (naming the address) when it cannot be bound.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Metrics>> Create(const MetricsOptions& opts);
  // Stops the listener first; civetweb (1.15) may take up to ~2 s to join
  // its threads once a scrape has been served.
  ~Metrics() override;

  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // SchedulerMetrics. RequestDone observes time to first token (only when
  // tokens were generated), queue time and duration, and counts the request
  // under `status`.
  void RequestDone(const std::string& status, const FinalInfo& info,
                   double duration_seconds) override;
  void PromptTokens(int64_t n) override;
  void GeneratedTokens(int64_t n) override;
  void InterTokenLatency(double seconds) override;
  void DecodeStep(int batch_size, double seconds) override;
  void Gauges(int queue_depth, int active_sequences, double kv_cache_usage) override;

  // Counts a request refused before it reached the scheduler (bad
  // arguments, queue full, draining); only m40llm_requests_total changes.
  void RequestRejected(const std::string& status);
  // The backend's memory and health (sampled by the server a few times a second).
  void BackendState(const BackendMemory& memory, bool healthy);
  // The configured capacity: admission queue length and decode slots.
  void Capacity(int queue_size, int max_batch);
  // The decoder's kind (once, at start-up) and progress (sampled).
  void DecoderKind(const std::string& kind);
  void DecoderState(const DecoderProgress& p);

  // The registry in Prometheus text exposition format (what /metrics serves,
  // without the listener's own exposer_* families).
  std::string Serialize() const;

  // "host:port" actually bound (the real port when 0 was asked for); empty
  // without a listener.
  std::string listen_address() const { return listen_address_; }

 private:
  Metrics();
  absl::Status Build(const MetricsOptions& opts);
  prometheus::Counter& RequestCounter(const std::string& status);

  // Declared first so that it outlives the exposer, which reads it.
  std::shared_ptr<prometheus::Registry> registry_;

  prometheus::Family<prometheus::Counter>* requests_family_ = nullptr;
  // The usual status values, created up front so they scrape as 0 and need
  // no family lookup; read-only after Build.
  absl::flat_hash_map<std::string, prometheus::Counter*> requests_by_status_;
  prometheus::Counter* prompt_tokens_ = nullptr;
  prometheus::Counter* generated_tokens_ = nullptr;
  prometheus::Counter* decode_steps_ = nullptr;
  prometheus::Histogram* ttft_ = nullptr;
  prometheus::Histogram* inter_token_ = nullptr;
  prometheus::Histogram* request_duration_ = nullptr;
  prometheus::Histogram* queue_time_ = nullptr;
  prometheus::Histogram* decode_batch_size_ = nullptr;
  prometheus::Histogram* decode_step_ = nullptr;
  prometheus::Family<prometheus::Gauge>* decoder_info_ = nullptr;
  prometheus::Gauge* heartbeat_age_ = nullptr;
  prometheus::Gauge* queue_depth_ = nullptr;
  prometheus::Gauge* active_sequences_ = nullptr;
  prometheus::Gauge* kv_cache_usage_ = nullptr;
  prometheus::Gauge* memory_weights_ = nullptr;
  prometheus::Gauge* memory_kv_cache_ = nullptr;
  prometheus::Gauge* memory_scratch_ = nullptr;
  prometheus::Gauge* device_used_ = nullptr;
  prometheus::Gauge* device_total_ = nullptr;
  prometheus::Gauge* backend_healthy_ = nullptr;
  prometheus::Gauge* queue_capacity_ = nullptr;
  prometheus::Gauge* max_sequences_ = nullptr;

  std::unique_ptr<prometheus::Exposer> exposer_;  // null without a listener
  std::string listen_address_;
};

}  // namespace m40llm
