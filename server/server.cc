// `m40llm serve` (see server.h).
#include "server/server.h"

#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/chat_template.h"
#include "engine/demo_model.h"
#include "engine/ggml_types.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/scheduler.h"
#include "engine/status.h"
#include "engine/tokenizer.h"
#include "grpcpp/health_check_service_interface.h"
#include "persistent/config.h"
#include "server/backend_loader.h"
#include "server/grpc_server.h"
#include "server/logging.h"
#include "server/metrics.h"
#include "server/service.h"
#include "spdlog/spdlog.h"

#ifndef M40LLM_VERSION
#define M40LLM_VERSION "unknown"
#endif

namespace m40llm {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
double MiB(uint64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

std::string BaseName(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// "Q4_K:193 F32:65 Q6_K:33": tensor types by count, most frequent first.
std::string WeightTypes(const GgufFile& file) {
  std::map<std::string, int> counts;
  for (const GgufTensorInfo& t : file.tensors()) ++counts[TypeName(t.type)];
  std::vector<std::pair<std::string, int>> sorted(counts.begin(), counts.end());
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  std::vector<std::string> parts;
  for (const auto& [name, n] : sorted) parts.push_back(absl::StrCat(name, ":", n));
  return absl::StrJoin(parts, " ");
}

v1::ModelInfo MakeModelInfo(const GgufFile& file, const Backend& backend,
                            uint64_t weight_bytes, const Tokenizer& tokenizer) {
  const ModelConfig& c = backend.config();
  v1::ModelInfo info;
  info.set_name(c.name);
  info.set_architecture(c.arch);
  info.set_file(BaseName(file.path()));
  info.set_n_vocab(c.n_vocab);
  info.set_n_ctx_train(c.n_ctx_train);
  info.set_n_embd(c.n_embd);
  info.set_n_layer(c.n_layer);
  info.set_n_head(c.n_head);
  info.set_n_head_kv(c.n_head_kv);
  info.set_head_dim(c.head_dim);
  info.set_n_ff(c.n_ff);
  info.set_tokenizer(tokenizer.vocab().model);
  info.set_bos_token_id(tokenizer.vocab().bos);
  info.set_eos_token_id(tokenizer.vocab().eos);
  info.set_eot_token_id(tokenizer.vocab().eot);
  info.set_add_bos(tokenizer.vocab().add_bos);
  info.set_weight_types(WeightTypes(file));
  info.set_weight_bytes(weight_bytes);
  info.set_backend(backend.name());
  info.set_device(backend.device());
  info.set_server_version(ServerVersion());
  return info;
}

// "0.0.0.0:50051" with the port actually bound.
std::string WithPort(const std::string& listen, int port) {
  const size_t colon = listen.rfind(':');
  return absl::StrCat(colon == std::string::npos ? listen : listen.substr(0, colon), ":", port);
}

// Everything RunServe owns, in construction order (destroyed in reverse:
// the gRPC server first, the model last).
struct Running {
  std::unique_ptr<Tokenizer> tokenizer;
  LoadedBackend engine;  // the model and the backend that runs it
  std::unique_ptr<Metrics> metrics;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<InferenceService> service;
  std::unique_ptr<grpc::Server> server;
};

absl::Status CheckOptions(const ServeOptions& o) {
  if (o.backend == "cuda" && !CudaBackendBuilt()) {
    return absl::FailedPreconditionError(
        "--backend cuda: this m40llm was built without CUDA (configure with a CUDA toolkit; "
        "see docs/gpu.md)");
  }
  if (o.backend != "cpu" && o.backend != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown backend '", o.backend, "': use cpu or cuda"));
  }
  if (o.max_batch < 1 || o.max_batch > kMaxSlots) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-batch must be in [1, ", kMaxSlots, "], got ", o.max_batch));
  }
  if (o.ctx_per_slot < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--ctx-per-slot must be >= 0 (0 = default), got ", o.ctx_per_slot));
  }
  if (o.device < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--device must be >= 0, got ", o.device));
  }
  if (o.max_tokens_per_pass < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-tokens-per-pass must be >= 1, got ", o.max_tokens_per_pass));
  }
  if (o.max_tokens_limit < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-tokens-limit must be >= 0 (0 = no limit), got ", o.max_tokens_limit));
  }
  if (o.queue_size < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--queue-size must be >= 0, got ", o.queue_size));
  }
  if (!(o.drain_timeout_seconds >= 0)) {
    return absl::InvalidArgumentError("--drain-timeout must be >= 0 seconds");
  }
  return absl::OkStatus();
}

// Chat's default template: --chat-template, else the model's own
// tokenizer.chat_template; logged either way.
ChatDefault ResolveChatDefault(const ServeOptions& o, const GgufFile& file, const Tokenizer& tok) {
  ChatDefault d;
  if (tok.vocab().eos >= 0) d.eos_text = tok.TokenText(tok.vocab().eos);
  if (!o.chat_template.empty()) {
    d.family = ChatFamilyFromArg(o.chat_template);
  } else if (file.Find("tokenizer.chat_template") != nullptr) {
    auto text = file.GetString("tokenizer.chat_template");
    d.family = text.ok() ? DetectChatFamily(*text) : absl::StatusOr<ChatFamily>(text.status());
  } else {
    d.family = absl::FailedPreconditionError(
        "the model has no chat template (tokenizer.chat_template) and the server was started "
        "without --chat-template: name a template in the request, or use Generate with a "
        "formatted prompt");
  }
  if (d.family.ok()) {
    spdlog::info("chat template: {}{}", ChatFamilyName(*d.family),
                 o.chat_template.empty() ? " (the model's)" : "");
  } else {
    spdlog::warn("Chat requests must name a template: {}", std::string(d.family.status().message()));
  }
  return d;
}

// Whether `listen` (host:port) can be bound now, checked before the model
// loads so that a busy port costs one line, not a load and gRPC's log dump.
// Port 0 (any free port) always can.
absl::Status CheckListenable(const std::string& listen, const char* flag) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " ", listen, ": expected host:port"));
  }
  std::string host = listen.substr(0, colon);
  const std::string port = listen.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (port == "0") return absl::OkStatus();
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  const int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " ", listen, ": cannot resolve it: ", gai_strerror(rc)));
  }
  absl::Status status = absl::OkStatus();
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0) {
      status = absl::UnavailableError(
          absl::StrCat("cannot listen on ", listen, " (", flag, "): ", std::strerror(errno)));
    }
    close(fd);
    if (!status.ok()) break;
  }
  freeaddrinfo(res);
  return status;
}

absl::Status Start(const ServeOptions& o, Running* run) {
  RETURN_IF_ERROR(CheckOptions(o));
  RETURN_IF_ERROR(CheckListenable(o.listen, "--listen"));
  if (!o.metrics_listen.empty()) RETURN_IF_ERROR(CheckListenable(o.metrics_listen, "--metrics-listen"));
  std::string path = o.model;
  if (path.empty()) {
    ASSIGN_OR_RETURN(path, EnsureDemoModel());
    spdlog::warn(
        "no --model given: serving the built-in demo model {} (random weights, "
        "its text is gibberish)",
        path);
  }
  const Clock::time_point t0 = Clock::now();
  ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(path));
  ASSIGN_OR_RETURN(run->tokenizer, Tokenizer::FromGguf(*file));
  ASSIGN_OR_RETURN(const ModelConfig c, ReadModelConfig(*file));
  BackendSpec spec;
  spec.kind = o.backend;
  spec.device = o.device;
  spec.max_tokens_per_pass = o.max_tokens_per_pass;
  ASSIGN_OR_RETURN(spec.weights, ParseWeightFormat(o.weights));
  spec.options.max_slots = o.max_batch;
  spec.options.ctx_per_slot =
      o.ctx_per_slot > 0 ? o.ctx_per_slot : std::min(c.n_ctx_train, 2048);
  spec.options.n_threads = o.threads;
  if (spec.options.ctx_per_slot > c.n_ctx_train) {
    spdlog::warn("--ctx-per-slot {} exceeds the model's training context {}",
                 spec.options.ctx_per_slot, c.n_ctx_train);
  }
  // Load progress as log lines, every tenth, for files over 64 MiB.
  int last_tenth = 0;
  const bool log_progress = file->size() > (64u << 20);
  const ProgressFn progress = [&](const LoadProgress& p) {
    if (!log_progress || p.bytes_total == 0) return;
    const int tenth = static_cast<int>(10 * p.bytes_done / p.bytes_total);
    if (tenth <= last_tenth) return;
    last_tenth = tenth;
    spdlog::info("loading {}: {}% ({:.0f} of {:.0f} MiB)", path, 10 * tenth, MiB(p.bytes_done),
                 MiB(p.bytes_total));
  };
  ASSIGN_OR_RETURN(run->engine, LoadBackend(*file, spec, progress));
  const Backend& backend = *run->engine.backend;
  const BackendOptions& bo = backend.options();
  const std::string device = backend.device();
  const uint64_t kv_bytes = run->engine.kv_cache_bytes;
  spdlog::info(
      "loaded {} in {:.2f} s: {} '{}', {} layers, n_embd {}, {} heads ({} KV), "
      "vocab {}, context {}, {:.1f} MiB of weights ({}) on {}",
      path, Seconds(Clock::now() - t0), c.arch, c.name, c.n_layer, c.n_embd, c.n_head, c.n_head_kv,
      c.n_vocab, c.n_ctx_train, MiB(run->engine.weight_bytes), WeightTypes(*file), device);

  MetricsOptions mo;
  mo.listen = o.metrics_listen;
  mo.version = ServerVersion();
  mo.backend = o.backend;
  mo.device = device;
  ASSIGN_OR_RETURN(run->metrics, Metrics::Create(mo));
  run->metrics->BackendState(backend.memory(), backend.health().ok());
  run->metrics->Capacity(o.queue_size, o.max_batch);

  SchedulerOptions so;
  so.max_batch = o.max_batch;
  so.ctx_per_slot = bo.ctx_per_slot;
  so.queue_size = o.queue_size;
  ASSIGN_OR_RETURN(std::unique_ptr<Decoder> decoder,
                   MakeDecoder("host", run->engine.backend.get(), *run->tokenizer, so.max_batch,
                               so.ctx_per_slot));
  ASSIGN_OR_RETURN(run->scheduler,
                   Scheduler::Create(run->engine.backend.get(), std::move(decoder),
                                     run->tokenizer.get(), so, run->metrics.get()));
  ServicePolicy policy;
  policy.chat = ResolveChatDefault(o, *file, *run->tokenizer);
  if (!o.chat_template.empty() && !policy.chat.family.ok()) return policy.chat.family.status();
  policy.max_tokens_limit = o.max_tokens_limit;
  run->metrics->DecoderKind(run->scheduler->decoder_kind());
  run->service = std::make_unique<InferenceService>(
      run->scheduler.get(), run->tokenizer.get(), run->metrics.get(),
      MakeModelInfo(*file, backend, run->engine.weight_bytes, *run->tokenizer), std::move(policy));
  int port = 0;
  ASSIGN_OR_RETURN(run->server, StartGrpcServer(o.listen, run->service.get(),
                                                v1::Inference::service_full_name(), &port));

  spdlog::info(
      "m40llm {} serving on {} ({} backend, {}): {} slots x {} positions, queue {}, "
      "KV cache {:.1f} MiB, weights {:.1f} MiB",
      ServerVersion(), WithPort(o.listen, port), o.backend, device, so.max_batch, so.ctx_per_slot,
      so.queue_size, MiB(kv_bytes), MiB(run->engine.weight_bytes));
  if (!run->metrics->listen_address().empty()) {
    spdlog::info("metrics on http://{}/metrics", run->metrics->listen_address());
  }
  return absl::OkStatus();
}

// Drain and stop, in the order the header describes.
void Stop(const ServeOptions& o, const sigset_t& signals, Running* run) {
  run->server->GetHealthCheckService()->SetServingStatus(false);
  run->scheduler->StartDrain();
  const SchedulerStats before = run->scheduler->stats();
  spdlog::info("draining: {} running, {} queued; waiting up to {:.0f} s", before.active_sequences,
               before.queue_depth, o.drain_timeout_seconds);
  const Clock::time_point end =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(o.drain_timeout_seconds));
  bool idle = false;
  while (!idle) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now());
    idle = run->scheduler->WaitIdle(
        std::clamp(left, std::chrono::milliseconds(0), std::chrono::milliseconds(200)));
    if (idle || Clock::now() >= end) break;
    const timespec no_wait = {0, 0};
    const int again = sigtimedwait(&signals, nullptr, &no_wait);
    if (again == SIGINT || again == SIGTERM) {
      spdlog::warn("second signal: not waiting for the remaining requests");
      break;
    }
  }
  if (!idle) {
    const SchedulerStats left = run->scheduler->stats();
    spdlog::warn("ending {} running and {} queued requests with UNAVAILABLE", left.active_sequences,
                 left.queue_depth);
  }
  run->scheduler->Shutdown();
  // Every call has its final status by now; the deadline only bounds
  // stragglers such as unary calls in progress.
  run->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  spdlog::info("stopped");
}

}  // namespace

const char* ServerVersion() { return M40LLM_VERSION; }

int RunServe(const ServeOptions& opts) {
  if (absl::Status s = ConfigureLogging(opts.log_level, opts.log_format); !s.ok()) {
    spdlog::error("{}", std::string(s.message()));
    return 1;
  }
  // SIGINT, SIGTERM and SIGHUP are blocked before any thread starts, so that
  // every thread inherits the mask and only sigtimedwait() below ever sees
  // them: no handler runs in signal context. SIGHUP (a closed terminal, or
  // an operator asking for a reload) never kills the server: there is
  // nothing to reload yet, so it is logged and ignored.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  Running run;
  if (absl::Status s = Start(opts, &run); !s.ok()) {
    spdlog::error("{}", std::string(s.message()));
    return 1;
  }
  // Wait for a signal, watching the backend: after a fault it cannot recover
  // from, health turns NOT_SERVING (requests in flight have already failed
  // with INTERNAL, new ones get UNAVAILABLE) and the process stays up so
  // that the orchestrator sees why and restarts it.
  int sig = 0;
  bool serving = true;
  for (;;) {
    const timespec tick = {0, 250 * 1000 * 1000};
    sig = sigtimedwait(&signals, nullptr, &tick);
    if (sig == SIGHUP) {
      spdlog::info("received SIGHUP: nothing to reload; still serving");
      continue;
    }
    if (sig > 0) break;
    const absl::Status h = run.scheduler->health();  // the backend's, else the decoder's
    run.metrics->BackendState(run.engine.backend->memory(), h.ok());
    run.metrics->DecoderState(run.scheduler->decoder_progress());
    if (serving && !h.ok()) {
      serving = false;
      run.server->GetHealthCheckService()->SetServingStatus(false);
      spdlog::error("health is NOT_SERVING: {}", std::string(h.message()));
    }
  }
  spdlog::info("received {}: shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  Stop(opts, signals, &run);
  return 0;
}

}  // namespace m40llm
