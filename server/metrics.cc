// Metrics: builds the m40llm_* families on a prometheus-cpp registry and
// serves them through a prometheus-cpp Exposer (civetweb). prometheus-cpp
// reports errors by throwing; every call that can throw is caught here and
// turned into a status.
#include "server/metrics.h"

#include <exception>
#include <iterator>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/status.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace m40llm {
namespace {

// requests_total series that exist from the start.
constexpr const char* kKnownStatuses[] = {
    "ok",          "cancelled", "invalid_argument", "resource_exhausted", "deadline_exceeded",
    "unavailable", "internal",  "out_of_range"};

template <size_t N>
prometheus::Histogram::BucketBoundaries Buckets(const double (&bounds)[N]) {
  return prometheus::Histogram::BucketBoundaries(std::begin(bounds), std::end(bounds));
}

// Splits "host:port" (host may be a bracketed IPv6 literal) and checks the
// port is a number in [0, 65535].
absl::Status ParseListen(const std::string& listen, std::string* host) {
  const size_t colon = listen.rfind(':');
  const auto invalid = [&listen] {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics listen address '", listen,
                     "' is not host:port (e.g. 0.0.0.0:8002 or 127.0.0.1:0)"));
  };
  if (colon == std::string::npos || colon == 0) return invalid();
  *host = listen.substr(0, colon);
  const std::string port_text = listen.substr(colon + 1);
  int port = -1;
  if (port_text.empty() || !absl::ascii_isdigit(port_text[0]) ||
      !absl::SimpleAtoi(port_text, &port) || port > 65535) {
    return invalid();
  }
  // A bare IPv6 address ("::1:8002") is ambiguous; civetweb wants brackets.
  const bool bracketed = host->front() == '[' && host->back() == ']';
  if (!bracketed && host->find(':') != std::string::npos) return invalid();
  return absl::OkStatus();
}

}  // namespace

Metrics::Metrics() : registry_(std::make_shared<prometheus::Registry>()) {}

Metrics::~Metrics() = default;

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Create(const MetricsOptions& opts) {
  std::unique_ptr<Metrics> metrics(new Metrics());
  RETURN_IF_ERROR(metrics->Build(opts));
  return metrics;
}

absl::Status Metrics::Build(const MetricsOptions& opts) {
  std::string host;
  if (!opts.listen.empty()) RETURN_IF_ERROR(ParseListen(opts.listen, &host));

  try {
    prometheus::Registry& r = *registry_;

    requests_family_ =
        &prometheus::BuildCounter()
             .Name("m40llm_requests_total")
             .Help(
                 "Generation requests finished, by final status (ok, cancelled, "
                 "invalid_argument, resource_exhausted, deadline_exceeded, unavailable, "
                 "internal, out_of_range, ...); includes requests refused before scheduling.")
             .Register(r);
    for (const char* status : kKnownStatuses) {
      requests_by_status_[status] = &requests_family_->Add({{"status", status}});
    }

    prompt_tokens_ = &prometheus::BuildCounter()
                          .Name("m40llm_prompt_tokens_total")
                          .Help("Prompt tokens prefilled.")
                          .Register(r)
                          .Add({});
    generated_tokens_ = &prometheus::BuildCounter()
                             .Name("m40llm_generated_tokens_total")
                             .Help("Completion tokens generated and streamed to clients.")
                             .Register(r)
                             .Add({});
    decode_steps_ = &prometheus::BuildCounter()
                         .Name("m40llm_decode_steps_total")
                         .Help("Batched decode steps run (one token for every active sequence).")
                         .Register(r)
                         .Add({});

    ttft_ = &prometheus::BuildHistogram()
                 .Name("m40llm_time_to_first_token_seconds")
                 .Help(
                     "Time from request submission to its first generated token, queueing "
                     "and prefill included; requests that generated no token are left out.")
                 .Register(r)
                 .Add({}, Buckets(kTimeToFirstTokenBuckets));
    inter_token_ = &prometheus::BuildHistogram()
                        .Name("m40llm_inter_token_latency_seconds")
                        .Help("Time between consecutive generated tokens of one request.")
                        .Register(r)
                        .Add({}, Buckets(kInterTokenLatencyBuckets));
    request_duration_ = &prometheus::BuildHistogram()
                             .Name("m40llm_request_duration_seconds")
                             .Help(
                                 "Time from request submission to its final response, for "
                                 "requests that reached the scheduler.")
                             .Register(r)
                             .Add({}, Buckets(kRequestDurationBuckets));
    queue_time_ = &prometheus::BuildHistogram()
                       .Name("m40llm_queue_time_seconds")
                       .Help(
                           "Time a request waited in the admission queue before its "
                           "prefill started.")
                       .Register(r)
                       .Add({}, Buckets(kQueueTimeBuckets));
    decode_batch_size_ = &prometheus::BuildHistogram()
                              .Name("m40llm_decode_batch_size")
                              .Help("Sequences decoded together in one decode step.")
                              .Register(r)
                              .Add({}, Buckets(kDecodeBatchSizeBuckets));

    decode_step_ = &prometheus::BuildHistogram()
                        .Name("m40llm_decode_step_seconds")
                        .Help("Duration of one decode step by the decoder's own clock.")
                        .Register(r)
                        .Add({}, Buckets(kDecodeStepBuckets));
    decoder_info_ = &prometheus::BuildGauge()
                         .Name("m40llm_decoder_info")
                         .Help("Always 1; the label names the decoder (host, persistent).")
                         .Register(r);
    heartbeat_age_ = &prometheus::BuildGauge()
                          .Name("m40llm_decoder_heartbeat_age_seconds")
                          .Help("Time since the decoder last completed a step while it held "
                                "sequences; 0 while idle.")
                          .Register(r)
                          .Add({});
    queue_depth_ = &prometheus::BuildGauge()
                        .Name("m40llm_queue_depth")
                        .Help("Requests waiting in the admission queue for a decode slot.")
                        .Register(r)
                        .Add({});
    active_sequences_ = &prometheus::BuildGauge()
                             .Name("m40llm_active_sequences")
                             .Help("Sequences currently holding a decode slot.")
                             .Register(r)
                             .Add({});
    kv_cache_usage_ = &prometheus::BuildGauge()
                           .Name("m40llm_kv_cache_usage_ratio")
                           .Help("Fraction of KV cache positions in use, from 0 to 1.")
                           .Register(r)
                           .Add({});
    auto& memory = prometheus::BuildGauge()
                       .Name("m40llm_memory_bytes")
                       .Help("Memory the compute backend allocated, by kind: weights, "
                             "kv_cache, scratch.")
                       .Register(r);
    memory_weights_ = &memory.Add({{"kind", "weights"}});
    memory_kv_cache_ = &memory.Add({{"kind", "kv_cache"}});
    memory_scratch_ = &memory.Add({{"kind", "scratch"}});
    auto& device = prometheus::BuildGauge()
                       .Name("m40llm_device_memory_bytes")
                       .Help("Memory of the device the backend runs on (GPU memory for "
                             "cuda, host RAM for cpu), by state: used, total.")
                       .Register(r);
    device_used_ = &device.Add({{"state", "used"}});
    device_total_ = &device.Add({{"state", "total"}});
    backend_healthy_ = &prometheus::BuildGauge()
                            .Name("m40llm_backend_healthy")
                            .Help("1 while the compute backend can run; 0 after a device "
                                  "fault it cannot recover from.")
                            .Register(r)
                            .Add({});
    backend_healthy_->Set(1);
    queue_capacity_ = &prometheus::BuildGauge()
                           .Name("m40llm_queue_capacity")
                           .Help("Requests the admission queue holds (--queue-size); a full "
                                 "queue answers RESOURCE_EXHAUSTED.")
                           .Register(r)
                           .Add({});
    max_sequences_ = &prometheus::BuildGauge()
                          .Name("m40llm_max_sequences")
                          .Help("Decode slots: sequences that can decode at once (--max-batch).")
                          .Register(r)
                          .Add({});
    prometheus::BuildGauge()
        .Name("m40llm_build_info")
        .Help("Always 1; labels give the server version, compute backend and device.")
        .Register(r)
        .Add({{"version", opts.version}, {"backend", opts.backend}, {"device", opts.device}})
        .Set(1);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("building the metric families failed: ", e.what()));
  }

  if (opts.listen.empty()) return absl::OkStatus();
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(opts.listen);
    exposer_->RegisterCollectable(registry_);
    const std::vector<int> ports = exposer_->GetListeningPorts();
    if (ports.empty()) {
      return absl::UnavailableError(
          absl::StrCat("metrics listener on ", opts.listen, " reports no bound port"));
    }
    listen_address_ = absl::StrCat(host, ":", ports.front());
  } catch (const std::exception& e) {
    exposer_.reset();
    // civetweb only says it could not bind; give the likely causes.
    const char* hint = host.front() == '['
                           ? "IPv6 unsupported by this civetweb build, port in use, or address "
                             "not on this host"
                           : "port in use, or address not on this host";
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", opts.listen, " (", hint, "): ", e.what()));
  }
  return absl::OkStatus();
}

prometheus::Counter& Metrics::RequestCounter(const std::string& status) {
  if (auto it = requests_by_status_.find(status); it != requests_by_status_.end()) {
    return *it->second;
  }
  // Rare statuses: Family::Add returns the existing series for known labels
  // and locks internally, so this is safe from any thread.
  return requests_family_->Add({{"status", status}});
}

void Metrics::RequestDone(const std::string& status, const FinalInfo& info,
                          double duration_seconds) {
  if (info.completion_tokens > 0) ttft_->Observe(info.ttft_seconds);
  queue_time_->Observe(info.queue_seconds);
  request_duration_->Observe(duration_seconds);
  RequestCounter(status).Increment();
}

void Metrics::RequestRejected(const std::string& status) { RequestCounter(status).Increment(); }

void Metrics::PromptTokens(int64_t n) {
  if (n > 0) prompt_tokens_->Increment(static_cast<double>(n));
}

void Metrics::GeneratedTokens(int64_t n) {
  if (n > 0) generated_tokens_->Increment(static_cast<double>(n));
}

void Metrics::InterTokenLatency(double seconds) { inter_token_->Observe(seconds); }

void Metrics::DecodeStep(int batch_size, double seconds) {
  decode_steps_->Increment();
  decode_batch_size_->Observe(batch_size);
  decode_step_->Observe(seconds);
}

void Metrics::DecoderKind(const std::string& kind) { decoder_info_->Add({{"kind", kind}}).Set(1); }

void Metrics::DecoderState(const DecoderProgress& p) { heartbeat_age_->Set(p.seconds_since_step); }

void Metrics::Gauges(int queue_depth, int active_sequences, double kv_cache_usage) {
  queue_depth_->Set(queue_depth);
  active_sequences_->Set(active_sequences);
  kv_cache_usage_->Set(kv_cache_usage);
}

void Metrics::BackendState(const BackendMemory& m, bool healthy) {
  memory_weights_->Set(static_cast<double>(m.weights));
  memory_kv_cache_->Set(static_cast<double>(m.kv_cache));
  memory_scratch_->Set(static_cast<double>(m.scratch));
  device_used_->Set(static_cast<double>(m.device_used));
  device_total_->Set(static_cast<double>(m.device_total));
  backend_healthy_->Set(healthy ? 1 : 0);
}

void Metrics::Capacity(int queue_size, int max_batch) {
  queue_capacity_->Set(queue_size);
  max_sequences_->Set(max_batch);
}

std::string Metrics::Serialize() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace m40llm
